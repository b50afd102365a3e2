"""`python -m bench NAME [NAME ...]` runs bench/NAME.py's `main()`; `python -m bench` runs every bench module.

Modules are discovered, not listed: any bench/*.py with a `main()` (and a name not starting with "_") is a benchmark.
A benchmark that fails is reported and the others still run; the exit code says whether all of them passed.
"""
from __future__ import annotations

import importlib
import pkgutil
import sys
import time
import traceback
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def discover() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules([str(PACKAGE_DIR)])
                  if not m.name.startswith("_") and not m.ispkg)


def run(names: list[str]) -> int:
    available = discover()
    unknown = [name for name in names if name not in available]
    if unknown:
        print(f"unknown benchmark(s) {', '.join(unknown)}; available: {', '.join(available) or 'none'}",
              file=sys.stderr)
        return 2
    failed = []
    for name in names or available:
        module = importlib.import_module(f"bench.{name}")
        if not callable(getattr(module, "main", None)):
            print(f"bench/{name}.py has no main(); skipped", file=sys.stderr)
            continue
        print(f"=== bench {name} ===", flush=True)
        started = time.monotonic()
        sys.argv = [f"bench/{name}.py"]  # a main() that parses arguments sees none (its defaults)
        try:
            code = module.main()
        except SystemExit as e:
            code = e.code
        except Exception:  # noqa: BLE001 - one failed benchmark must not stop the others
            traceback.print_exc()
            code = 1
        print(f"=== bench {name}: {'ok' if not code else f'failed ({code})'} in "
              f"{time.monotonic() - started:.0f} s ===", flush=True)
        if code:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
