import pytest

from swarm.runconfig import ConfigError, RunConfig, load_yaml, restart_needed, validate, validate_run_id


def test_defaults_are_valid_and_round_trip_json():
    cfg = validate({})
    assert cfg == RunConfig()
    assert RunConfig.from_json(cfg.to_json()) == cfg


def test_known_keys_from_earlier_trainers_are_accepted():
    cfg = validate({"model": "runwayml/stable-diffusion-v1-5", "resolution": 512, "lr": 1e-4, "ucg": 0.1,
                    "clip_penultimate": True, "train_text_encoder": False, "use_ema": True, "opt_betas_one": 0.9,
                    "opt_betas_two": 0.999, "opt_epsilon": 1e-8, "opt_weight_decay": 1e-2, "buckets_shuffle": True,
                    "buckets_side_min": 256, "buckets_side_max": 512, "lr_scheduler": "cosine",
                    "lr_warmup_steps": 10, "target_batch_size": 40000, "seed": 1, "sample_prompts": "a cat"})
    assert cfg.clip_penultimate and cfg.sample_prompts == ("a cat",) and cfg.lr_scheduler == "cosine"


@pytest.mark.parametrize("raw, fragment", [
    ({"lr": -1}, "lr must be > 0"),
    ({"lr": "fast"}, "lr must be a number"),
    ({"ucg": 1.5}, "ucg is a fraction"),
    ({"lr_scheduler": "step"}, "lr_scheduler must be one of constant, linear, cosine"),
    ({"resolution": 500}, "multiple of 64"),
    ({"resolution": 1024, "buckets_side_max": 768}, "must lie between"),
    ({"use_ema": "yes"}, "use_ema must be true or false"),
    ({"learning_rate": 1e-4}, "unknown run config key(s) learning_rate"),
    ({"target_batch_size": 0}, "target_batch_size must be >= 1"),
    ({"lr": float("nan")}, "finite"),
    ({"buckets_max_area": 512 * 256}, "buckets_max_area must be 0 (resolution²) or at least resolution² (262144)"),
])
def test_bad_values_say_what_to_fix(raw, fragment):
    with pytest.raises(ConfigError, match=None) as e:
        validate(raw)
    assert fragment in str(e.value)


def test_yaml_errors_name_the_file(tmp_path):
    bad = tmp_path / "run.yaml"
    bad.write_text("lr: [unclosed")
    with pytest.raises(ConfigError, match="run.yaml is not valid YAML"):
        load_yaml(str(bad))
    with pytest.raises(ConfigError, match="does not exist"):
        load_yaml(str(tmp_path / "missing.yaml"))
    bad.write_text("lr: 0\n")
    with pytest.raises(ConfigError, match="run.yaml: lr must be > 0"):
        load_yaml(str(bad))


def test_restart_needed_names_keys_that_cannot_change_live():
    old = RunConfig()
    assert restart_needed(old, old.replace(lr=1e-5)) == []
    assert restart_needed(old, old.replace(model="other/model", seed=3)) == ["model", "seed"]
    assert restart_needed(old, old.replace(buckets_max_area=512 * 768)) == ["buckets_max_area"]


def test_buckets_max_area_takes_novelais_value():
    assert RunConfig().buckets_max_area == 0  # resolution², today's buckets
    novelai = validate({"resolution": 512, "buckets_side_max": 1024, "buckets_max_area": 393216})
    assert novelai.buckets_max_area == 393216


@pytest.mark.parametrize("run_id", ["", "-x", "has space", "a" * 65, "../etc"])
def test_bad_run_ids(run_id):
    with pytest.raises(ConfigError, match="run id must be"):
        validate_run_id(run_id)


def test_yaml_exponents_without_a_dot_are_numbers(tmp_path):
    # YAML 1.1 reads 1e-4 as a string; users write learning rates that way.
    path = tmp_path / "run.yaml"
    path.write_text("lr: 1e-4\nopt_epsilon: 1e-8\n")
    cfg = load_yaml(str(path))
    assert cfg.lr == 1e-4 and cfg.opt_epsilon == 1e-8
