from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from cxrbench.config import build, config_hash, load_yaml, parse_overrides
from cxrbench.errors import ConfigError


@dataclass
class Optim:
    lr: float = 1e-3
    name: str = "adamw"


@dataclass
class Schema:
    epochs: int = 1
    optim: Optim = field(default_factory=Optim)
    tags: list[str] = field(default_factory=list)


RSNA_TINY = "6af6d5114a5f98e0"  # rsna_cls, tiny preset, 100% labels


def test_layers_merge_in_order(tmp_path) -> None:
    base = tmp_path / "base.yaml"
    base.write_text("epochs: 5\noptim:\n  lr: 0.01\n")
    cfg = build(Schema, [load_yaml(base), parse_overrides(["optim.lr=2e-4", "tags=[a,b]"])])
    assert cfg == Schema(epochs=5, optim=Optim(lr=2e-4), tags=["a", "b"])


def test_unknown_key_names_file_and_key(tmp_path) -> None:
    bad = tmp_path / "method.yaml"
    bad.write_text("epochs: 2\noptim:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError) as info:
        build(Schema, [load_yaml(bad)])
    assert info.value.file == str(bad)
    assert info.value.key == "optim.lrr"
    assert "unknown key" in str(info.value)


def test_wrong_type_names_file_and_key(tmp_path) -> None:
    bad = tmp_path / "task.yaml"
    bad.write_text("epochs: many\n")
    with pytest.raises(ConfigError) as info:
        build(Schema, [load_yaml(bad)])
    assert info.value.file == str(bad) and info.value.key == "epochs"


def test_overrides_errors_name_the_flag() -> None:
    with pytest.raises(ConfigError) as info:
        build(Schema, [parse_overrides(["optim.momentum=0.9"])])
    assert info.value.file == "--set" and info.value.key == "optim.momentum"
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["epochs"])


def test_missing_and_invalid_files(tmp_path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_yaml(tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("epochs: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(broken)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_yaml(listy)


def test_config_hash_ignores_key_order_but_not_values() -> None:
    a = build(Schema, [parse_overrides(["epochs=3", "optim.lr=0.1"])])
    b = build(Schema, [parse_overrides(["optim.lr=0.1", "epochs=3"])])
    c = build(Schema, [parse_overrides(["optim.lr=0.2", "epochs=3"])])
    assert config_hash(a) == config_hash(b)
    assert config_hash(a) != config_hash(c)
    assert len(config_hash(a)) == 16


def test_a_layers_required_marker_overrides_the_value_below(tmp_path) -> None:
    preset = tmp_path / "paper.yaml"
    preset.write_text("optim:\n  name: ???\n")
    layers = [parse_overrides(["optim.name=sgd"], "<method>"), load_yaml(preset)]
    with pytest.raises(ConfigError) as info:
        build(Schema, layers)  # OmegaConf's merge alone would keep "sgd"
    assert info.value.file == str(preset) and info.value.key == "optim.name"
    assert "required value is missing" in str(info.value)
    cfg = build(Schema, [*layers, parse_overrides(["optim.name=lamb"])])
    assert cfg.optim.name == "lamb"


def test_run_identities_survive_the_move_to_resolve() -> None:
    """Config hashes computed before the resolution step moved (and trainer.channels_last was
    removed) are unchanged: finished runs and leaderboard entries keep their identity."""
    from cxrbench.runner.resolve import load_config, load_task

    assert load_config("convirt", "tiny").config_hash == "ddab33471bdebe88"
    assert load_config("mgca", "small").config_hash == "250df4a8f2e8ec04"
    assert load_task("rsna_cls", "tiny", [], 1.0).config_hash == RSNA_TINY
    # text.depth (added later): at its default the hash holds, set it is part of the identity
    assert load_config("mgca", "small", ["text.depth=null"]).config_hash == "250df4a8f2e8ec04"
    assert load_config("mgca", "small", ["text.depth=1"]).config_hash != "250df4a8f2e8ec04"


def test_ema_is_a_decay_below_one_and_part_of_the_run_identity() -> None:
    from cxrbench.runner.resolve import load_task

    for bad in ("1.0", "-0.1"):
        with pytest.raises(ConfigError) as info:
            load_task("siim_seg", "tiny", [f"train.ema={bad}"], 1.0)
        assert info.value.key == "train.ema" and "[0, 1)" in str(info.value)
    off = load_task("rsna_cls", "tiny", ["train.ema=0"], 1.0).config_hash
    assert off == RSNA_TINY  # off: earlier results keep their hash
    assert load_task("rsna_cls", "tiny", ["train.ema=0.9"], 1.0).config_hash != off


def test_transfer_validation_interval_reaches_the_trainer(tmp_path) -> None:
    from cxrbench.runner.resolve import load_task
    from cxrbench.runner.transfer import _trainer

    job = load_task("siim_seg", "tiny", ["train.val_every=3", "trainer.progress=false"], 1.0)
    trainer, _ = _trainer(job, tmp_path, "val/loss", "min", None)
    assert trainer.check_val_every_n_epoch == 3
    assert load_task("rsna_cls", "tiny", ["train.val_every=1"], 1.0).config_hash == RSNA_TINY
    with pytest.raises(ConfigError, match=r"train\.val_every"):
        load_task("siim_seg", "tiny", ["train.val_every=0"], 1.0)


def test_official_recipe_layers_the_method_yaml_section_over_the_preset() -> None:
    from cxrbench.runner.resolve import load_config

    unified = load_config("mgca", "paper", ["text.model=/m"])
    official = load_config("mgca", "paper", ["text.model=/m", "recipe=official"])
    assert (unified.cfg.text.depth, unified.cfg.optim.grad_clip) == (None, 1.0)
    assert (official.cfg.text.depth, official.cfg.optim.grad_clip) == (6, None)
    assert (
        official.cfg.trainer.precision == "32-true" and official.config_hash != unified.config_hash
    )
    assert official.cfg.optim.lr == unified.cfg.optim.lr  # what the protocol already shares
    # --set still comes last
    assert load_config("mgca", "paper", ["text.model=/m", "recipe=official",
                                         "text.depth=4"]).cfg.text.depth == 4  # fmt: skip
    gloria = load_config("gloria", "paper", ["text.model=/m", "recipe=official"])
    assert gloria.params.sentence_sampling and gloria.cfg.data.batch_size == 48
    with pytest.raises(ConfigError, match="no official: section"):
        load_config("convirt", "small", ["recipe=official"])
    with pytest.raises(ConfigError, match="one of unified, official"):
        load_config("mgca", "small", ["recipe=paper"])


def test_a_presets_task_section_applies_to_that_task_only(tmp_path, monkeypatch) -> None:
    """``transfer_<task>:`` merges after ``transfer_<kind>:`` for one task; a section naming
    neither a kind nor a task is an error naming the preset file."""
    from cxrbench.runner import resolve

    rsna = resolve.load_task("rsna_seg", "small")
    assert rsna.cfg.train.val_limit == 200 and rsna.cfg.train.patience == 15  # its own section
    assert rsna.cfg.optim.schedule == "cosine"
    siim = resolve.load_task("siim_seg", "small")
    assert siim.cfg.train.val_limit == 0 and siim.cfg.train.patience == 3  # the kind's only
    assert rsna.cfg.train.val_every == siim.cfg.train.val_every == 2  # kind's, shared

    bad = tmp_path / "small.yaml"
    bad.write_text("transfer_rsna_segm:\n  train:\n    patience: 1\n")
    monkeypatch.setattr(resolve, "packaged_config", lambda kind, name: bad)
    with pytest.raises(ConfigError, match=r"transfer_rsna_segm.*transfer_<task>"):
        resolve.load_task("rsna_seg", "small")
