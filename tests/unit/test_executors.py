"""Executors of a plan: the SLURM job graph (arrays, dependencies, resources, DDP overrides) built
through submitit's debug cluster, jobs that run the same code as the local executor in the
right order, the dry run (counts, skipped runs, where each estimate comes from) and suite
validation of the resource sections."""

from __future__ import annotations

import json
import pickle
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from cxrbench.errors import ConfigError, CxrbenchError
from cxrbench.report.schema import ResultRecord
from cxrbench.report.store import write_record
from cxrbench.runner import execute
from cxrbench.runner.bench import dry_run, submit_bench
from cxrbench.runner.executors import Requeueable, SubmititBackend, submit_plan
from cxrbench.runner.plan import make_plan, pretrain_dir, transfer_dir
from cxrbench.runner.resolve import PretrainJob, load_config, load_task, pretrain_overrides, resolve
from cxrbench.suite import Resources, Suite, load_suite


class RecordingBackend(SubmititBackend):
    """submitit's debug cluster (jobs run in this process when waited for), recording every
    submission: the job function, its calls, the update_parameters values and the jobs."""

    def __init__(self, folder: Path) -> None:
        super().__init__(folder, cluster="debug")
        self.submissions: list[tuple[Any, list[tuple], dict[str, Any], list[Any]]] = []

    def submit(self, fn: Any, calls: Any, params: dict[str, Any]) -> list[Any]:
        jobs = super().submit(fn, calls, params)
        self.submissions.append((fn, list(calls), params, jobs))
        return jobs


def _finish_pretrain(suite: Suite, method: str, out: Path, seconds: float = 36.0) -> None:
    spec = next(p for p in make_plan(suite).pretrain if p.method == method)
    meta = {"method": method, "extra": {"preset": suite.preset, "wall_seconds": seconds}}
    path = pretrain_dir(suite, spec, out) / "encoder" / "encoder.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(meta))


def _finish_transfer(suite: Suite, out: Path, method: str, seconds: float = 72.0) -> None:
    spec = next(t for t in make_plan(suite).transfer if t.method == method)
    job = load_task(spec.task, suite.preset, suite.transfer_overrides, spec.fraction)
    record = ResultRecord(
        suite=suite.name, method=method, task=spec.task, task_version=1,
        fraction=spec.fraction, seed=spec.seed, pretrain_seed=0, metric="test/auroc",
        higher_is_better=True, metrics={"test/auroc": 0.5}, config_hash=job.config_hash,
        code_version="x", encoder_sha256="x", split_hash="x", data_fingerprint="x",
        probe_mode="cached", wall_seconds=seconds, device="cpu", created="now",
    )  # fmt: skip
    write_record(transfer_dir(suite, spec, out) / "result.json", record)


GRID = Suite(
    name="grid",
    preset="tiny",
    data_root="/nonexistent",  # nothing may read it
    methods=["random_init", "convirt"],
    tasks=["rsna_cls", "siim_seg"],
    fractions=[0.1, 1.0],
    seeds=[42, 0],
    resources={
        "pretrain": Resources(nodes=1, gpus_per_node=2, cpus_per_task=6, timeout_min=600),
        "pretrain_random_init": Resources(gpus_per_node=1, timeout_min=20),
        "transfer": Resources(gpus_per_node=1),
        "transfer_segmentation": Resources(timeout_min=99, partition="seg"),
    },
)


def test_slurm_arrays_dependencies_resources_and_ddp(tmp_path) -> None:
    out = tmp_path / "runs"
    _finish_pretrain(GRID, "random_init", out)  # finished: no job, its arrays wait for nothing
    _finish_transfer(GRID, out, "convirt")  # finished: left out of its array
    backend = RecordingBackend(tmp_path / "slurm")
    sub = submit_plan(resolve(GRID, out, progress=False), backend=backend)
    pre = [s for s in backend.submissions if s[0].fn is execute.pretrain_job]
    arrays = [s for s in backend.submissions if s[0].fn is execute.transfer_job]
    assert len(pre) == 1 and len(arrays) == 4 and backend.submissions[0] is pre[0]
    _, [(job,)], params, [convirt_job] = pre[0]
    assert job.method == "convirt" and list(sub.pretrain) == ["convirt/pretrain/s0"]
    assert params["gpus_per_node"] == 2 and params["tasks_per_node"] == 2  # one task per GPU
    assert (params["cpus_per_task"], params["timeout_min"], params["nodes"]) == (6, 600, 1)
    assert "slurm_dependency" not in params
    assert isinstance(job.config, PretrainJob)
    cfg = job.config.cfg  # the job carries its resolved config: nothing is merged on the node
    assert (cfg.trainer.devices, cfg.trainer.num_nodes, cfg.trainer.strategy) == (2, 1, "ddp")
    assert cfg.trainer.progress is False  # no progress bars in SLURM logs
    spec = make_plan(GRID).pretrain[1]
    assert (
        job.config_hash
        == load_config("convirt", "tiny", pretrain_overrides(GRID, spec)).config_hash
    )
    by_label = {s[2]["name"]: s for s in arrays}
    for method in ("random_init", "convirt"):
        for kind, task in (("classification", "rsna_cls"), ("segmentation", "siim_seg")):
            _, calls, params, jobs = by_label[f"cxrbench-grid-{method}-pretrain-s0-{kind}"]
            specs = [c[0] for c in calls]
            assert {(t.method, t.task) for t in specs} == {(method, task)}
            assert all(t.depends_on == f"{method}/pretrain/s0" for t in specs)
            expected = 3 if (method, kind) == ("convirt", "classification") else 4
            assert len(jobs) == len(specs) == expected
            assert params["tasks_per_node"] == 1 and params["gpus_per_node"] == 1
            assert params["timeout_min"] == (99 if kind == "segmentation" else 240)
            assert params.get("slurm_partition") == ("seg" if kind == "segmentation" else None)
            if method == "convirt":  # waits for its encoder's job; cancelled if that fails
                assert params["slurm_dependency"] == f"afterok:{convirt_job.job_id}"
                assert params["slurm_additional_parameters"] == {"kill-on-invalid-dep": "yes"}
            else:
                assert "slurm_dependency" not in params
    assert len(sub.transfer) == 15 and len(sub.finished) == 1
    fn, calls, _, _ = arrays[0]
    restored_fn, restored_args = pickle.loads(pickle.dumps((fn, calls[0])))
    assert isinstance(restored_fn, Requeueable) and restored_fn.fn is execute.transfer_job
    assert restored_args[0].key == calls[0][0].key
    assert restored_args[0].config_hash == calls[0][0].config_hash


def test_force_resubmits_finished_runs_and_a_stale_encoder_stops_everything(tmp_path) -> None:
    out = tmp_path / "runs"
    _finish_pretrain(GRID, "random_init", out)
    _finish_transfer(GRID, out, "convirt")
    backend = RecordingBackend(tmp_path / "slurm")
    sub = submit_plan(resolve(GRID, out, force=True), force=True, backend=backend)
    assert (len(sub.transfer), sub.finished) == (16, [])
    assert not list(out.rglob("result.json"))  # deleted before submitting: requeues resume
    spec = make_plan(GRID).pretrain[0]  # random_init's finished encoder, made with other config
    (pretrain_dir(GRID, spec, out) / "config.yaml").write_text("config_hash: stale\n")
    backend = RecordingBackend(tmp_path / "slurm")
    with pytest.raises(CxrbenchError, match=r"nothing submitted(.|\n)*config hash stale"):
        submit_plan(resolve(GRID, out), backend=backend)
    assert backend.submissions == []


def test_no_resources_adds_no_ddp_overrides() -> None:
    """Suites without resources keep their configs (and so their run identities)."""
    suite = Suite(preset="tiny", methods=["convirt"])
    spec = make_plan(suite).pretrain[0]
    assert pretrain_overrides(suite, spec) == ["seed=0"]
    with_ddp = replace(suite, resources={"pretrain": Resources(gpus_per_node=4, nodes=2)})
    assert pretrain_overrides(with_ddp, spec)[-3:] == [
        "trainer.devices=4", "trainer.num_nodes=2", "trainer.strategy=ddp"
    ]  # fmt: skip
    plain = load_config("convirt", "tiny", pretrain_overrides(suite, spec))
    assert (
        plain.config_hash
        != load_config("convirt", "tiny", pretrain_overrides(with_ddp, spec)).config_hash
    )


def test_debug_cluster_runs_the_jobs_in_order_and_skips_finished(
    synth_tiny, tmp_path, monkeypatch
) -> None:
    order: list[str] = []
    real_pretrain, real_transfer = execute.run_pretrain, execute.run_transfer

    def pretrain(job, data_root, run_dir, store_root):
        order.append(f"pretrain {job.cfg.method}")
        assert store_root.name == "images"  # beside the feature cache
        return real_pretrain(job, data_root, run_dir, store_root)

    def transfer(job, artifact, data_root, **kw):
        order.append(f"transfer {job.task.name} s{kw['seed']}")
        return real_transfer(job, artifact, data_root, **kw)

    monkeypatch.setattr(execute, "run_pretrain", pretrain)
    monkeypatch.setattr(execute, "run_transfer", transfer)
    suite = Suite(name="debug", preset="tiny", data_root=str(synth_tiny), methods=["random_init"],
                  tasks=["rsna_cls"], fractions=[1.0], seeds=[42, 0],
                  transfer_overrides=["train.max_epochs=3"])  # fmt: skip
    out = tmp_path / "runs"
    backend = RecordingBackend(tmp_path / "slurm")
    submission = submit_bench(suite, out, backend=backend)
    assert order == []  # submitted, not run: the debug cluster runs a job when waited for
    outcome = submission.wait()
    assert outcome.ok, outcome.failures
    assert order == ["pretrain random_init", "transfer rsna_cls s42", "transfer rsna_cls s0"]
    assert sorted(r.seed for r in outcome.records) == [0, 42]
    assert all(0 <= r.value <= 1 and r.suite == "debug" for r in outcome.records)
    assert len(list((out / "debug").rglob("result.json"))) == 2
    again = submit_bench(suite, out, backend=RecordingBackend(tmp_path / "slurm2"))
    assert (again.pretrain, again.transfer, len(again.finished)) == ({}, [], 2)
    assert [r.value for r in again.wait().records] == [r.value for r in outcome.records]


def test_dry_run_counts_skips_and_says_where_estimates_come_from(tmp_path) -> None:
    out = tmp_path / "runs"
    suite = replace(GRID, tasks=["rsna_cls"], fractions=[0.1])
    _finish_pretrain(suite, "random_init", out, seconds=36.0)
    _finish_transfer(suite, out, "random_init", seconds=72.0)
    before = sorted(out.rglob("*"))
    text = dry_run(suite, out, executor="slurm")
    assert sorted(out.rglob("*")) == before  # nothing written, nothing run
    assert "pretrain: 2 jobs, 1 finished (skipped), 1 to run" in text
    assert "transfer: 4 runs in 2 job arrays, 1 finished (skipped), 3 to run" in text
    assert "random_init/pretrain/s0 > classification: 1 to run, 1 finished" in text
    assert "pretrain random_init: 0.01 h (measured: median of 1 finished pre-trainings)" in text
    assert "transfer rsna_cls f0.1: 0.02 h (measured: median of 1 finished runs)" in text
    assert "pretrain convirt: 0.05 h (code default (measured: 2-core CPU, ConVIRT))" in text
    assert "1 node × 2 GPU (DDP), 12 CPU" in text  # the DDP job: 2 tasks × 6 CPUs
    # what would run: convirt 0.05 h × 2 GPUs + 3 transfers × 0.02 h × 1 GPU
    assert "estimated cost of what would run: 0.11 wall hours of jobs, 0.2 GPU-hours" in text
    # and the whole grid: the finished random-init pre-training (0.01 h) and transfer (0.02 h)
    assert "cost of the whole grid, finished jobs included: 0.14 wall hours of jobs" in text
    # here, one job at a time: CPU-hours are the wall hours × the cores a job uses, not the
    # slurm request (12 and 6 CPUs above)
    cores = torch.get_num_threads()
    local = dry_run(suite, out, executor="local")
    assert (
        f"{0.11 * cores:,.1f} CPU-hours (one job at a time on this machine's {cores} cores" in local
    )
    given = replace(suite, estimates=replace(suite.estimates, pretrain_hours={"convirt": 5.0}))
    assert "pretrain convirt: 5 h (suite estimates.pretrain_hours.convirt)" in dry_run(given, out)


def test_dry_run_of_the_mgca_protocol_suite_needs_no_data(capsys) -> None:
    from cxrbench.cli import main

    args = ["bench", "--suite", "benchmarks/mgca_protocol.yaml", "--data-root", "/nonexistent"]
    assert main([*args, "--executor", "slurm", "--dry-run"]) == 2  # problems: exit non-zero
    text = capsys.readouterr().out  # the paper preset requires the text model: a problem
    assert re.search(r"problems \(\d+; the suite does not start until they are fixed\)", text)
    assert "mgca/pretrain/s0: " in text and "key 'text.model': required value is missing" in text
    assert "random_init/pretrain/s0: " not in text.split("problems")[1]  # it needs no text model
    args += ["--pretrain-set", "text.model=/models/Bio_ClinicalBERT"]
    assert main([*args, "--executor", "slurm", "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "pretrain: 8 jobs, 0 finished (skipped), 8 to run" in text
    assert "transfer: 504 runs in 24 job arrays, 0 finished (skipped), 504 to run" in text
    assert "mgca/pretrain/s0: 1 to run, 0 finished; 1 node × 2 GPU" in text
    assert "random_init: 0.02 h (nothing is trained" in text
    assert "problems" not in text


@pytest.mark.parametrize(
    ("body", "key", "words"),
    [
        ("resources:\n  pretrain: {gpus: 2}\n", "resources.pretrain.gpus", "unknown key"),
        ("resources:\n  pretrian: {nodes: 1}\n", "resources.pretrian", "sections are"),
        ("resources:\n  pretrain_mgcaa: {nodes: 1}\n", "resources.pretrain_mgcaa", "'mgca'"),
        ("resources:\n  transfer: {gpus_per_node: 2}\n", "resources.transfer", "one device"),
        ("resources:\n  pretrain: {nodes: 0}\n", "resources.pretrain.nodes", ">= 1"),
        ("slurm: {acount: x}\n", "slurm.acount", "unknown key"),
        ("estimates:\n  transfer_hours: {clasification: 1}\n", "clasification", "kinds"),
    ],
)
def test_bad_resource_sections_name_file_and_key(tmp_path, body, key, words) -> None:
    path = tmp_path / "suite.yaml"
    path.write_text(f"name: x\nmethods: [convirt]\n{body}")
    with pytest.raises(ConfigError) as err:
        load_suite(path)
    assert str(path) in str(err.value) and key in str(err.value) and words in str(err.value)


def test_slurm_executor_without_sbatch_says_so(tmp_path, monkeypatch, capsys) -> None:
    from cxrbench.cli import build_parser, main
    from cxrbench.runner.bench import suite_from_args

    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    args = ["bench", "--preset", "tiny", "--method", "random_init", "--task", "rsna_cls",
            "--data-root", "/nonexistent", "--out", str(tmp_path / "runs"),
            "--pretrain-set", "trainer.max_epochs=2", "--executor", "slurm"]  # fmt: skip
    suite = suite_from_args(build_parser().parse_args(args))
    assert suite.pretrain_overrides == ["trainer.max_epochs=2"]
    assert main(args) == 2
    assert "--executor slurm needs SLURM's sbatch on PATH" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_a_run_slowed_by_a_shared_machine_does_not_move_the_estimate() -> None:
    from cxrbench.runner.bench import _from_runs

    hours, why = _from_runs([72.0, 7200.0, 72.0], "finished runs")  # one ran beside ten others
    assert hours == 0.02 and why == "measured: median of 3 finished runs"


def test_a_failed_job_leaves_its_traceback_and_is_logged_once(
    tmp_path, monkeypatch, caplog
) -> None:
    """error.txt in the run folder (traceback, config hash, command); one log line per failure,
    naming that file; the transfers of a failed encoder are skipped with the reason."""

    def broken(job, data_root, run_dir, store_root):
        raise RuntimeError("the GPU caught fire")

    monkeypatch.setattr(execute, "run_pretrain", broken)
    suite = Suite(name="fail", preset="tiny", data_root="/nonexistent", methods=["random_init"],
                  tasks=["rsna_cls"], fractions=[1.0], seeds=[42, 0])  # fmt: skip
    plan = resolve(suite, tmp_path / "runs", command="cxrbench bench --name fail")
    outcome = execute.execute(plan)
    [pretrain] = plan.pretrain
    error = pretrain.run_dir / "error.txt"
    text = error.read_text()
    assert "RuntimeError: the GPU caught fire" in text and "Traceback" in text
    assert f"config hash: {pretrain.config_hash}" in text
    assert "command: cxrbench bench --name fail" in text
    assert [k for k, _ in outcome.failures] == [j.key for j in plan.jobs]
    assert str(error) in outcome.failures[0][1]
    assert all("its encoder random_init/pretrain/s0 failed" in r for _, r in outcome.failures[1:])
    logged = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(logged) == 1 and str(error) in logged[0]
    monkeypatch.setattr(execute, "run_pretrain", lambda job, root, run, _: run / "encoder")
    execute.pretrain_job(pretrain)  # a later attempt that succeeds removes the stale report
    assert not error.exists()
