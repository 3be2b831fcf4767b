"""Config composition, overrides and one-line errors."""
import pytest

from genesis_dist.config import ConfigError, load_config, model_config


def test_model_group_files_load_against_the_schema():
    for name in ("genesis_v2", "genesis", "genesis_s"):
        assert model_config(name=name).name == name


def test_dotlist_overrides_and_group_selection():
    cfg = load_config(["model=genesis", "model.num_slots=9", "optim.lr=3e-4", "run.storage_path=s3://b/runs"])
    assert cfg.model.name == "genesis" and cfg.model.num_slots == 9
    assert cfg.optim.lr == 3e-4 and cfg.run.storage_path == "s3://b/runs"


@pytest.mark.parametrize(
    "overrides, pattern",
    [
        (["model.foo=1"], r"^override: model\.foo: unknown key; allowed: name, img_size, num_slots"),
        (["model.num_slots=abc"], r"model\.num_slots: Value 'abc' .* Integer"),
        (["model.kernel=cosine"], r"model\.kernel='cosine' is not allowed; choose one of: gaussian"),
        (["model=nope"], r"model=nope: no such config; available: genesis, genesis_s, genesis_v2"),
        (["optim.precision=fp8"], r"optim\.precision='fp8' is not allowed"),
        (["model.img_size=48"], r"model\.img_size=48: must be a power of two"),
        (["optim.batch_size=32", "scaling.num_workers=3"], r"divisible"),
        (["optim"], r"expected key=value"),
    ],
)
def test_mistakes_are_one_line_errors_naming_the_key(overrides, pattern):
    with pytest.raises(ConfigError, match=pattern) as info:
        load_config(overrides)
    assert "\n" not in str(info.value)


def test_config_is_read_only():
    cfg = load_config([])
    with pytest.raises(Exception):
        cfg.optim.lr = 1.0


def test_broken_yaml_is_one_line_error(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "bad.yaml").write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML") as info:
        load_config(["model=bad"], config_dir=tmp_path)
    assert "\n" not in str(info.value)
