"""The config loader: every profile loads, overrides apply, and every mistake is caught before work."""

from pathlib import Path

import pytest

from segnet import paths
from segnet.config import Config, config_from_yaml, load_config
from segnet.errors import ConfigError

PROFILES = sorted(p for p in paths.CONFIGS.glob("*.yaml"))


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.name)
def test_every_profile_loads(profile):
    cfg = load_config(profile)
    assert cfg.model.decoder and cfg.train.epochs >= 1


def test_quick_is_the_default_profile():
    assert load_config().train.epochs == load_config(paths.QUICK_CONFIG).train.epochs


def test_overrides_are_typed_and_applied():
    cfg = load_config(None, ["train.epochs=3", "model.decoder=upsampling", "decoder.interpolation=bilinear",
                             "train.lr=1e-4", "data.augment.enabled=false", "data.dir=/some/where"])
    assert cfg.train.epochs == 3 and isinstance(cfg.train.lr, float) and cfg.train.lr == 1e-4
    assert cfg.model.decoder == "upsampling" and cfg.decoder["interpolation"] == "bilinear"
    assert cfg.data.augment.enabled is False and cfg.data.dir == "/some/where"
    assert cfg.variant() == "upsampling_bilinear"


@pytest.mark.parametrize(
    "override, culprit",
    [
        ("train.epoch=3", "train.epoch"),  # typo
        ("trian.epochs=3", "trian"),  # unknown section
        ("train.epochs=three", "train.epochs"),  # wrong type
        ("train.epochs=2.5", "train.epochs"),
        ("train.resume=maybe", "train.resume"),
        ("train.loss=focal", "train.loss"),  # bad choice, allowed values listed
        ("train.strategy=tpu", "train.strategy"),
        ("data.size=16", "data.size"),
        ("data.augment.hflip=1.5", "data.augment.hflip"),
        ("model.decoder=deconv", "deconv"),  # unknown decoder, valid names listed
        ("decoder.interpolation=bilinear", "interpolation"),  # option the default decoder does not take
        ("decoder.kernel_size=5", "kernel_size"),  # bad option value
        ("data.fold=7", "data.fold"),
        ("train", "key=value"),
        ("train=3", "train"),
        ("train.seed=-1", "train.seed"),  # numpy refuses negative seeds: caught here, not in a traceback
        ("data.fold_seed=-1", "data.fold_seed"),
        ("data.synth_seed=-2", "data.synth_seed"),
        ("data.augment.rotate=-5", "data.augment.rotate"),
        ("train.salt_weight=-0.1", "train.salt_weight"),
        ("train.salt_weight=0.5", "train.salt_weight"),  # the classifier's weight without deep supervision
    ],
)
def test_bad_config_fails_naming_the_key(override, culprit):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    msg = str(e.value)
    assert culprit in msg and "\n" not in msg


@pytest.mark.parametrize(
    "override",
    ["train.lr=.nan", "train.lr=nan", "train.lr=NaN", "train.lr=.inf", "train.lr=1e999", "train.min_lr=-.inf",
     "model.dropout=.nan", "data.augment.hflip=.nan", "data.augment.rotate=.inf", "data.augment.shift=inf"],
)
def test_every_float_key_must_be_finite(override):
    """NaN passes every range check (all comparisons are false): it must be refused by name."""
    key = override.split("=")[0]
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    msg = str(e.value)
    assert f"'{key}'" in msg and "finite" in msg and "\n" not in msg


def test_non_finite_float_in_a_profile_file(tmp_path: Path):
    bad = tmp_path / "nan.yaml"
    bad.write_text("train:\n  lr: .nan\n")
    with pytest.raises(ConfigError, match=r"train\.lr.*finite"):
        load_config(bad)


def test_min_lr_above_lr_names_both_keys():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["train.lr=1e-4", "train.min_lr=1e-3"])
    msg = str(e.value)
    assert "train.min_lr" in msg and "train.lr" in msg and "\n" not in msg
    cfg = load_config(None, ["train.lr=1e-4", "train.min_lr=1e-4"])  # equal: a constant floor, allowed
    assert cfg.train.min_lr == cfg.train.lr


def test_config_path_that_is_a_folder(tmp_path: Path):
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path)
    msg = str(e.value)
    assert str(tmp_path) in msg and "folder" in msg and "\n" not in msg
    assert msg.count(str(tmp_path)) == 1  # named once, not "<path>: <path>: ..."


def test_config_file_that_is_not_text(tmp_path: Path):
    bad = tmp_path / "binary.yaml"
    bad.write_bytes(b"\xff\xfe\x00\x81train")
    with pytest.raises(ConfigError, match="binary.yaml"):
        load_config(bad)


def test_unknown_decoder_lists_the_valid_ones():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["model.decoder=deconv"])
    for name in ("transposed", "upsampling", "maxunpool", "bed_of_nails", "pixel_shuffle", "bilinear_additive"):
        assert name in str(e.value)


def test_bad_choice_lists_the_allowed_values():
    with pytest.raises(ConfigError, match="bce, dice, bce_dice, lovasz_hinge"):
        load_config(None, ["train.loss=focal"])


def test_bad_profile_file(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochs: 3\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match="train.learning_rate"):
        load_config(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "broken.yaml").write_text("train: [epochs\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "broken.yaml")


def test_saved_config_round_trips_with_overrides():
    cfg = load_config(None, ["model.decoder=maxunpool", "train.epochs=4"])
    again = config_from_yaml(cfg.to_yaml(), ["data.dir=/x"])
    assert again.model.decoder == "maxunpool" and again.train.epochs == 4 and again.data.dir == "/x"
    assert again.replace(["data.dir=null"]) == cfg


def test_hash_ignores_resume_and_changes_with_the_model():
    a = load_config(None, [])
    assert a.hash() == load_config(None, ["train.resume=true"]).hash()
    assert a.hash() != load_config(None, ["model.filters=8"]).hash()


def test_salt_weight_at_its_default_keeps_old_hashes_and_otherwise_changes_them():
    """train.salt_weight came after the deep-supervision runs: at its default a config hashes as before
    (resume and ablations find those runs); another weight is another run."""
    on = load_config(None, ["model.deep_supervision=true"])
    assert on.train.salt_weight == 0.05
    assert on.hash() == "5ea74410ea18"  # computed before the key existed; a key added without _ADDED_KEYS breaks it
    assert load_config("configs/tgs_best.yaml", []).hash() == "c5e5755175ff"
    assert on.hash() != load_config(None, ["model.deep_supervision=true", "train.salt_weight=0.5"]).hash()


def test_hash_counts_a_dataset_folder_by_its_data_not_its_spelling(tmp_path, monkeypatch):
    """`make cv DATA=../x` restarted as `DATA=/abs/x/` (or through a symlink) is the same experiment; the
    path hash (the spelling: what older versions tagged runs with, and what a host without the folder
    computes) comes along to find those runs."""
    import shutil

    from segnet.data.synthetic import generate

    data = generate(tmp_path / "d", n=8, seed=0, progress=False)
    (tmp_path / "link").symlink_to(data)
    monkeypatch.chdir(tmp_path / "link")
    spellings = [str(data), f"{data}/", "../d", ".", str(tmp_path / "link")]
    cfgs = [load_config(None, [f"data.dir={d}"]) for d in spellings]
    assert len({c.hash() for c in cfgs}) == 1
    assert len({c.path_hash() for c in cfgs}) == len(spellings)  # by path: one per spelling
    assert cfgs[2].hashes() == [cfgs[0].hash(), cfgs[2].path_hash()]
    other = generate(tmp_path / "e", n=8, seed=1, progress=False)
    assert load_config(None, [f"data.dir={other}"]).hash() != cfgs[0].hash()  # other data, other experiment
    # the data changes (an image more): another experiment, though the cache has seen the folder
    before = cfgs[0].hash()
    shutil.copy(data / "train" / "images" / f"{_first_id(data)}.png", data / "train" / "images" / "extra.png")
    with open(data / "train.csv", "a") as f:
        f.write("extra,\n")
    assert cfgs[0].hash() != before
    # no dataset there (moved away, or never on this host), or no data.dir: the hash is the path hash
    missing = load_config(None, [f"data.dir={tmp_path / 'none'}"])
    assert missing.hashes() == [missing.path_hash()]
    assert load_config().hashes() == [load_config().path_hash()]
    (tmp_path / "d").rename(tmp_path / "moved")
    assert cfgs[0].hashes() == [cfgs[0].path_hash()]


def _first_id(root) -> str:
    return sorted(p.stem for p in (root / "train" / "images").glob("*.png"))[0]


def test_flat_params_cover_every_key():
    flat = load_config().flat()
    for key in ("data.dir", "data.size", "model.decoder", "model.filters", "model.depth", "train.epochs",
                "train.batch_size", "train.seed", "tracking.uri", "tracking.experiment", "data.augment.hflip"):
        assert key in flat


def test_readme_documents_every_config_key_in_a_well_formed_row():
    readme = (paths.ROOT / "README.md").read_text().splitlines()
    rows = {line.split("`")[1]: line for line in readme if line.startswith("| `") and "." in line.split("`")[1]}
    for key in Config().flat():
        assert key in rows, f"README's configuration table lacks {key}"
        # an unescaped | inside a cell adds a column and breaks the table
        cells = rows[key].replace("\\|", "").strip("|").split("|")
        assert len(cells) == 3, rows[key]


def test_the_best_profile_is_tgs_plus_the_components_that_paid():
    """configs/tgs_best.yaml is configs/tgs.yaml with deep supervision, the symmetric Lovasz fine-tune and
    28 epochs (the hour on 2 CPU cores), nothing else: README's measurements of tgs.yaml still apply to the rest."""
    tgs = load_config(paths.CONFIGS / "tgs.yaml").flat()
    best = load_config(paths.CONFIGS / "tgs_best.yaml").flat()
    assert {k: best[k] for k in best if best[k] != tgs[k]} == {
        "model.deep_supervision": True, "train.finetune_loss": "lovasz_elu", "train.epochs": 28}
