import pytest

from unhans.pipeline.core.errors import UserError
from unhans.stages import load_config


def test_demo_config_loads_with_defaults():
    cfg = load_config("demo")
    assert cfg.name == "demo"
    assert cfg.dataset.kind == "digits"
    assert cfg.run_url == "runs/demo"


@pytest.mark.parametrize("name", ["demo", "fashion-mnist", "imagenet"])
def test_shipped_configs_are_valid(name):
    assert load_config(name).name == name


def test_unknown_key_names_the_key_and_the_allowed_keys():
    with pytest.raises(UserError) as e:
        load_config("demo", ["attribute.compsite=epsilon_plus"])
    msg = str(e.value)
    assert "attribute.compsite" in msg and "composite" in msg and "resolution" in msg
    assert len(msg.splitlines()) == 1


def test_unknown_section_is_one_clear_error():
    with pytest.raises(UserError, match=r"unknown key 'atribute'.*allowed keys here: .*attribute"):
        load_config("demo", ["atribute.k=3"])


def test_bad_registry_value_lists_the_choices():
    with pytest.raises(UserError) as e:
        load_config("demo", ["attribute.composite=lrp_magic"])
    msg = str(e.value)
    assert "attribute.composite" in msg and "epsilon_plus_flat" in msg and "epsilon_gamma_box" in msg


@pytest.mark.parametrize(
    "override, needle",
    [
        ("attribute.resolution=24", "power of two"),
        ("attribute.target=logit", "'label' or 'prediction'"),
        ("distances.k=1", "greater than or equal to 2"),
        ("model.arch=resnet99", "small_cnn"),
        ("dataset.kind=cifar", "digits"),
        ("distances.metric=cosine", "euclidean"),
    ],
)
def test_bad_values_name_key_and_allowed_values(override, needle):
    key = override.split("=")[0]
    with pytest.raises(UserError) as e:
        load_config("demo", [override])
    assert key in str(e.value) and needle in str(e.value)


def test_set_parses_yaml_values():
    cfg = load_config(
        "demo",
        [
            "train.epochs=7",
            "dataset.poison.regime=backdoor",
            "dataset.poison.sources=[1, 2]",
            "attribute.features=false",
        ],
    )
    assert cfg.train.epochs == 7 and cfg.dataset.poison.sources == [1, 2] and cfg.attribute.features is False


def test_malformed_override_and_missing_config():
    with pytest.raises(UserError, match="section.key=value"):
        load_config("demo", ["train.epochs"])
    with pytest.raises(UserError, match="known configs: .*demo"):
        load_config("no-such-dataset")


def test_a_folder_named_like_a_config_does_not_hide_it(tmp_path, monkeypatch):
    """`-c demo` in a folder that holds a run folder `demo` still means configs/demo.yaml."""
    (tmp_path / "demo").mkdir()
    monkeypatch.chdir(tmp_path)
    assert load_config("demo").name == "demo"
