from pathlib import Path

import pytest

from exptrack.config import (
    Config,
    ConfigError,
    load_config,
    parse_override,
    replace,
    save_config,
    to_flat_dict,
)

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def test_defaults_match_the_original_readme():
    from exptrack.config import ORIGINAL_VALUES

    changed = {k: v for k, v in to_flat_dict(Config()).items() if k in ORIGINAL_VALUES}
    assert all(changed[k] != v for k, v in ORIGINAL_VALUES.items())  # each listed change is real
    c = load_config(None, [f"{k}={v}" for k, v in ORIGINAL_VALUES.items()])
    assert (c.data.clip_len, c.data.train_stride, c.data.eval_stride, c.data.frame_size) == (16, 8, 16, 112)
    assert (c.train.batch_size, c.train.epochs) == (8, 100)
    assert (c.optim.lr, c.optim.weight_decay) == (1e-4, 1e-5)
    assert (c.optim.plateau_factor, c.optim.plateau_patience, c.optim.min_lr) == (0.5, 5, 1e-7)
    assert c.loss.focal_gamma == 2.0
    assert (c.train.early_stop_patience, c.train.early_stop_min_delta) == (10, 0.001)
    assert (c.train.checkpoint_every, c.train.keep_checkpoints) == (10, 3)
    assert c.data.skeleton_sigma == 10.0 and c.model.num_classes == 17


def test_config_is_frozen():
    with pytest.raises(AttributeError):
        Config().train.epochs = 3  # type: ignore[misc]


@pytest.mark.parametrize("name", ["demo.yaml", "c3d_paper.yaml"])
def test_shipped_experiments_load(name):
    cfg = load_config(EXPERIMENTS / name)
    assert cfg.data.use_masks and cfg.data.use_skeleton_attention and cfg.data.downsample_class1


def test_base_inheritance_and_overrides(tmp_path):
    (tmp_path / "base.yaml").write_text("train:\n  epochs: 7\n  batch_size: 4\noptim:\n  lr: 0.01\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\ntrain:\n  epochs: 9\n")
    cfg = load_config(tmp_path / "child.yaml", ["optim.lr=3e-4", "data.use_masks=true"])
    assert cfg.train.epochs == 9  # child wins over base
    assert cfg.train.batch_size == 4  # inherited
    assert cfg.optim.lr == 3e-4  # override wins over both
    assert cfg.data.use_masks is True


def test_only_one_level_of_base(tmp_path):
    (tmp_path / "a.yaml").write_text("train:\n  epochs: 1\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    (tmp_path / "c.yaml").write_text("base: b.yaml\n")
    with pytest.raises(ConfigError, match="only one level"):
        load_config(tmp_path / "c.yaml")


@pytest.mark.parametrize("override, message", [
    ("train.epochz=3", "train.epochz"),
    ("trian.epochs=3", "trian"),
    ("train.epochs=three", "train.epochs: expected int"),
    ("train.epochs=2.5", "train.epochs: expected int"),
    ("data.use_masks=maybe", "data.use_masks: expected bool"),
    ("optim.lr=fast", "optim.lr: expected float"),
    ("data.frame_base=2", "data.frame_base"),
    ("epochs=3", "section.key"),
    ("train.epochs", "section.key=value"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_config(None, [override])


def test_unknown_key_in_yaml_names_file_and_key(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("train:\n  epoch: 3\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "train.epoch" in str(err.value) and str(path) in str(err.value)


def test_wrong_type_in_yaml(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("optim:\n  lr: [1, 2]\n")
    with pytest.raises(ConfigError, match=r"optim\.lr"):
        load_config(path)


def test_override_value_types():
    assert parse_override("optim.lr=1e-3")[2] == pytest.approx(1e-3)
    assert parse_override("optim.lr=1")[2] == 1.0 and isinstance(parse_override("optim.lr=1")[2], float)
    assert parse_override("train.device=cuda:1")[2] == "cuda:1"
    assert parse_override("mlflow.experiment=007")[2] == "007"  # strings stay verbatim


def test_range_checks():
    with pytest.raises(ConfigError, match="val_fraction"):
        load_config(None, ["data.val_fraction=1.5"])


def test_flat_dict_and_round_trip(tmp_path):
    cfg = replace(Config(), train={"epochs": 3})
    flat = to_flat_dict(cfg)
    assert flat["train.epochs"] == 3 and flat["data.clip_len"] == 16
    path = save_config(cfg, tmp_path / "resolved.yaml")
    assert load_config(path) == cfg


def test_paper_config_restores_the_original_values():
    from exptrack.config import ORIGINAL_VALUES

    flat = to_flat_dict(load_config(EXPERIMENTS / "c3d_paper.yaml"))
    assert {k: flat[k] for k in ORIGINAL_VALUES} == ORIGINAL_VALUES


# ---------------------------------------------------------------------------------------------
# Bad config files: one clear ConfigError naming the file (issue 11)


def test_a_folder_as_config_or_as_base_is_named(tmp_path):
    with pytest.raises(ConfigError, match=f"{tmp_path}: is a folder"):
        load_config(tmp_path)
    (tmp_path / "sub").mkdir()
    path = tmp_path / "x.yaml"
    path.write_text("base: sub\n")
    with pytest.raises(ConfigError, match=r"x\.yaml: base: sub names a folder"):
        load_config(path)


def test_non_utf8_yaml_names_the_file_and_byte_without_its_content(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_bytes(b"train:\n  epochs: 3\n# caf\xe9 secret\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert message.startswith(f"{path}:3: not UTF-8") and "byte 24" in message and "secret" not in message


@pytest.mark.parametrize("text, line, key", [
    ("train:\n  epochs: 3\n  epochs: 4\n", 3, "epochs"),
    ("train:\n  epochs: 3\noptim:\n  lr: 0.1\ntrain:\n  batch_size: 2\n", 5, "train"),
])
def test_a_key_given_twice_names_file_line_and_key(tmp_path, text, line, key):
    path = tmp_path / "x.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=f"x\\.yaml:{line}: key '{key}' given twice"):
        load_config(path)


def test_yaml_merge_keys_are_not_duplicates(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("train:\n  <<: {epochs: 3}\n  batch_size: 2\n")
    assert load_config(path).train.epochs == 3


def test_a_wrong_type_in_yaml_names_the_file(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("optim:\n  lr: [1, 2]\n")
    with pytest.raises(ConfigError, match=f"{path}: optim\\.lr"):
        load_config(path)


@pytest.mark.parametrize("saved, problem", [
    ({"optim": {"lr": "fast"}}, r"optim\.lr"),
    ({"optim": {"lr": -1.0}}, r"optim\.lr must be > 0"),
    ({"nope": {}}, "unknown section"),
    ({"train": {"epoch": 3}}, r"unknown key train\.epoch"),
    ({"train": 3}, "must be a mapping"),
    ([1, 2], "expected a mapping"),
])
def test_a_bad_saved_config_says_it_came_from_the_checkpoint(saved, problem):
    from exptrack.config import config_from_dict

    with pytest.raises(ConfigError, match=f"^ckpt/best_model\\.pt: saved config: .*{problem}"):
        config_from_dict(saved, "ckpt/best_model.pt")


def test_a_saved_config_from_newer_code_says_so_and_what_to_do():
    """A model packaged by a newer exptrack, loaded where an older exptrack was imported first
    (mlflow.pyfunc cannot swap a loaded package for the model's packaged code)."""
    from exptrack.config import config_from_dict

    with pytest.raises(ConfigError, match=r"unknown key model\.future_switch to the exptrack running here "
                                          r"\(.*exptrack\): a newer exptrack made this model\. Load it in a fresh "
                                          r"Python process"):
        config_from_dict({"model": {"future_switch": True}}, "weights.pt")


def test_static_removal_with_one_frame_clips_is_off_by_default_and_refused_when_set():
    """One frame minus its mean over a one-frame clip is zero: the model would see nothing."""
    assert load_config(None, ["data.clip_len=1"]).model.static_removal == 0.0
    with pytest.raises(ConfigError, match=r"model.static_removal=0.5 needs data.clip_len >= 2"):
        load_config(None, ["data.clip_len=1", "model.static_removal=0.5"])


def test_static_removal_auto_follows_the_mask_switch(tmp_path):
    """Auto (the default) is resolved when the config is made, so a saved config holds what the
    model really did: the room removed without masks, plain frames with them."""
    assert Config().model.static_removal == 1.0
    assert load_config(None, ["data.use_masks=true"]).model.static_removal == 0.0
    assert load_config(None, ["data.use_masks=true", "model.static_removal=0.5"]).model.static_removal == 0.5
    saved = to_flat_dict(load_config(None, ["data.use_masks=true"]))
    assert saved["model.static_removal"] == 0.0  # logged as params and in every checkpoint


@pytest.mark.parametrize("override, says", [
    ("data.skeleton_sigma=nan", "data.skeleton_sigma must be a finite number"),
    ("optim.lr=nan", "optim.lr must be a finite number"),
    ("train.grad_clip=nan", "train.grad_clip must be a finite number"),
    ("augment.rotation_deg=inf", "augment.rotation_deg must be a finite number"),
    ("model.dropout=1.5", "model.dropout must be in \\[0, 1\\), got 1.5"),
    ("model.dropout_fc=-0.1", "model.dropout_fc must be in \\[0, 1\\), got -0.1"),
    ("optim.weight_decay=-1", "optim.weight_decay must be >= 0, got -1.0"),
    ("optim.plateau_factor=2", "optim.plateau_factor must be in \\(0, 1\\), got 2.0"),
    ("train.grad_clip=-1", "train.grad_clip must be >= 0 \\(0 = off\\), got -1.0"),
    ("data.dominant_class=99", "data.dominant_class must be a class id, 0..16"),
    ("train.eval_batch_size=0", "train.eval_batch_size must be >= 1"),
    ("train.keep_checkpoints=-1", "train.keep_checkpoints must be >= 0, got -1"),
    ("train.seed=-5", "train.seed must be in \\[0, 4294967295\\], got -5"),
    ("data.val_seed=-1", "data.val_seed must be in \\[0, 4294967295\\]"),
    ("data.demo_classes=40", "data.demo_classes must be in \\[2, 16\\]"),
    ("train.seeds=0,-1", "train.seeds: -1 is not a seed"),
    (f"data.root=/data/{'a' * 300}", "data.root has a folder or file name of 300 bytes"),
    (f"paths.cache={'/abc' * 1100}", "paths.cache is 4400 bytes long; a path may have at most 4095"),
    (f"mlflow.experiment={'e' * 501}", "mlflow.experiment is 501 characters long; MLflow takes at most 500"),
    (f"mlflow.registered_model={'m' * 257}", "mlflow.registered_model is 257 characters long"),
])
def test_values_out_of_range_are_refused_naming_the_key(override, says):
    with pytest.raises(ConfigError, match=says):
        load_config(None, [override])


@pytest.mark.parametrize("override, says", [
    ("train.device=garbage", "train.device must be auto, cpu, cuda, cuda:N or mps"),
    ("mlflow.experiment=", "mlflow.experiment must not be empty"),
    ("mlflow.registered_model=team/c3d", "mlflow.registered_model must not contain '/'"),
])
def test_names_mlflow_or_torch_would_refuse_later_are_refused_now(override, says):
    with pytest.raises(ConfigError, match=says):
        load_config(None, [override])


def test_a_cuda_device_on_a_machine_without_one_is_a_config_error(monkeypatch):
    import torch

    from exptrack.device import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="train.device=cuda: this machine has no CUDA device torch can use"):
        resolve_device("cuda")


def _laughs(path: Path, width: int, levels: int) -> Path:
    """A "billion laughs" file: `levels` nested lists, each of `width` aliases of the one above."""
    lines = [f"a: &a [{', '.join(['x'] * width)}]"]
    for i in range(1, levels):
        lines.append(f"{chr(97 + i)}: &{chr(97 + i)} [" + ", ".join([f"*{chr(96 + i)}"] * width) + "]")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("width, levels, says", [
    (10, 12, "bomb.yaml:12: more than 100 YAML aliases"),  # many aliases
    (9, 9, "bomb.yaml: more than 100000 values once its YAML aliases are expanded"),  # 72 aliases, 9**9 values
])
def test_a_billion_laughs_yaml_is_refused_before_it_expands(tmp_path, width, levels, says):
    with pytest.raises(ConfigError, match=says):
        load_config(_laughs(tmp_path / "bomb.yaml", width, levels))


@pytest.mark.parametrize("special", ["/dev/zero", "fifo"])
def test_a_device_or_a_pipe_as_config_is_refused_without_reading_it(tmp_path, special):
    import os

    path = tmp_path / "fifo" if special == "fifo" else Path(special)
    if special == "fifo":
        os.mkfifo(path)  # reading would block until a writer came
    with pytest.raises(ConfigError, match="not a regular file"):
        load_config(path)


def test_a_config_file_larger_than_any_config_is_refused(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text("# " + "x" * (2 << 20) + "\n")
    with pytest.raises(ConfigError, match="larger than a config file can be"):
        load_config(big)


def test_a_config_nested_20000_deep_is_one_line_naming_the_file(tmp_path, capsys):
    from exptrack.cli import main

    deep = tmp_path / "deep.yaml"
    deep.write_text("train: " + "[" * 20_000 + "]" * 20_000 + "\n")
    assert main(["train", "--config", str(deep)]) == 2
    assert f"{deep}:1: nested more than 50 levels deep" in capsys.readouterr().err


def test_a_config_path_longer_than_the_os_allows_is_one_line(tmp_path, capsys):
    from exptrack.cli import main

    assert main(["train", "--config", str(tmp_path / ("x" * 300 + ".yaml"))]) == 2
    err = capsys.readouterr().err
    assert "cannot read it as a config file (File name too long)" in err and "Traceback" not in err


def test_zero_demo_subjects_is_refused_not_read_as_the_preset_count():
    with pytest.raises(ConfigError, match="data.demo_subjects must be >= 3 \\(null: the preset's own count\\), got 0"):
        load_config(None, ["data.demo_subjects=0"])


def test_every_range_is_written_beside_its_field():
    """validate() checks the `bounded` metadata of every field: a range added to a field is
    enforced with no other change, and the fields with one are the numbers with a meaning."""
    import dataclasses

    from exptrack.config import SECTIONS

    ranged = {f"{section}.{f.name}" for section, cls in SECTIONS.items() for f in dataclasses.fields(cls)
              if "bounds" in f.metadata}
    assert {"data.clip_len", "model.dropout", "optim.lr", "train.epochs", "augment.hflip_p"} <= ranged
    for key in sorted(ranged):
        section, name = key.split(".")
        bounds = next(f for f in dataclasses.fields(SECTIONS[section]) if f.name == name).metadata["bounds"]
        outside = bounds.low - 1 if bounds.low is not None else bounds.high + 1
        with pytest.raises(ConfigError, match=f"{key} must be "):
            load_config(None, [f"{key}={outside:g}"])
