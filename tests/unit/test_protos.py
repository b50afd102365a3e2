"""The checked-in gRPC stubs must be exactly what `make proto` generates from protos/."""
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[2]


def test_stubs_match_protos(tmp_path):
    protos = sorted(str(p.relative_to(ROOT / "protos")) for p in (ROOT / "protos").rglob("*.proto"))
    assert protos, "no .proto files found"
    args = ["protoc", f"-I{ROOT / 'protos'}", f"--python_out={tmp_path}", f"--pyi_out={tmp_path}",
            f"--grpc_python_out={tmp_path}", *protos]
    assert protoc.main(args) == 0
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*_pb2*.py*"))
    assert generated
    stale = [str(rel) for rel in generated if (ROOT / rel).read_text() != (tmp_path / rel).read_text()]
    assert not stale, f"stubs out of date with protos/: {stale}; run `make proto` and commit the result"
