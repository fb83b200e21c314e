"""CUDA graphs for A2C (agents/cuda_graphs.py, ``a2c.cuda_graphs``) against the eager path.

On CUDA (skipped without it): one agent and K batched agents trained with graphs end where the eager path ends
(``reuse_forward=False``: the graphed update runs the loss's own forward pass), unwatched — the optimiser step
inside the graph — and watched — the step eager after the replay, the watch seeing the same losses and
gradients, and gradients it holds from one step to the next left untouched by the next replay.
On the CPU the same comparisons run the graph plumbing with a stand-in whose replay re-runs the captured
function into the first run's outputs (what a replay does to a graph's outputs); and the option is refused in
one line."""

import pytest
import torch

from agents import cuda_graphs
from agents.a2c import A2CConfig, make_optimizer, train_agent
from agents.batched_a2c import BatchedActorCritic, train_agents
from agents.nets import ActorCritic
from metarl.seam import NULL_WATCH, Observer, OptimizerWatch, StackedWatch

pytest.importorskip("envpool")

from envs.atari import close_all, make_atari  # noqa: E402

UPDATES = 6
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible")


class Recorder(Observer):
    """Every step's loss and gradient (copies) and parameters after it; the gradients it held from the previous
    step must still hold what they held (Leap keeps them by reference until the next step closes a segment)."""

    def __init__(self) -> None:
        self.losses, self.grads, self.params = [], [], []
        self.held: list[torch.Tensor] = []

    def before_step(self, params, grads, loss) -> None:
        for held, copy in zip(self.held, self.grads[-1] if self.grads else []):
            assert torch.equal(held, copy), "a gradient held from the previous step changed before this one"
        self.held = list(grads)
        self.losses.append(loss.clone())
        self.grads.append([g.clone() for g in grads])

    def after_step(self, params) -> None:
        self.params.append([p.clone() for p in params])


class RerunGraphs(cuda_graphs.Graphs):
    """CPU stand-in for :class:`agents.cuda_graphs.Graphs`: warm-up as the real one; the first run of a key is
    its capture and first replay; each later replay re-runs the function (gradients assigned, not accumulated,
    as a replay's backward assigns them) and copies its tensors into the first run's outputs."""

    def __init__(self, device) -> None:
        self._graphs = {}

    def run(self, key, fn, warm_up=None, before=None):
        if key not in self._graphs:
            for _ in range(cuda_graphs.WARM_UP):
                if before is not None:
                    before()
                (warm_up or fn)()
            if before is not None:
                before()
            self._graphs[key] = fn()
            return self._graphs[key]
        if before is not None:
            before()
        _copy_into(self._graphs[key], fn())
        return self._graphs[key]


def _copy_into(static, new) -> None:
    if isinstance(static, torch.Tensor):
        static.copy_(new)
    elif isinstance(static, (list, tuple)):
        for a, b in zip(static, new):
            _copy_into(a, b)


def _single(device: str, graphs: bool, optimizer: str, watched: bool):
    cfg = A2CConfig(num_envs=4, optimizer=optimizer, reuse_forward=False, cuda_graphs=graphs)
    env = make_atari("Breakout", 4, 3, backend="envpool", num_threads=1)
    model = ActorCritic(env.num_actions, generator=torch.Generator().manual_seed(0)).to(device)
    opt = make_optimizer(model.parameters(), cfg)
    recorder = Recorder()
    try:
        with (OptimizerWatch(opt, list(model.parameters()), [recorder]) if watched else NULL_WATCH) as watch:
            result = train_agent(env, model, opt, UPDATES * cfg.batch_size, watch=watch, cfg=cfg, final_loss=True,
                                 generator=torch.Generator(device=device).manual_seed(1))
    finally:
        env.close()
    return list(model.parameters()), result, recorder


def _batched(device: str, graphs: bool, watched: bool):
    cfg = A2CConfig(num_envs=2, reuse_forward=False, cuda_graphs=graphs)
    envs = [make_atari(g, 2, s, backend="envpool", num_threads=1) for g, s in (("Breakout", 5), ("Pong", 6))]
    models = [ActorCritic(e.num_actions, generator=torch.Generator().manual_seed(k)).to(device)
              for k, e in enumerate(envs)]
    model = BatchedActorCritic(models)
    opt = make_optimizer(model.parameters(), cfg)
    recorders = [Recorder(), Recorder()]
    gens = [torch.Generator(device=device).manual_seed(10 + k) for k in range(2)]
    watch = StackedWatch(opt, list(model.parameters()),
                         lambda i, t, k: model.agent_view(list(dict(model.named_parameters()))[i], t, k),
                         [[r] for r in recorders]) if watched else NULL_WATCH
    try:
        with watch as w:
            results = train_agents(envs, model, opt, UPDATES * cfg.batch_size, cfg, gens, watch=w, final_loss=True)
    finally:
        close_all(envs)
    return list(model.parameters()), results, recorders


def _same(a, b, exact: bool) -> None:
    if exact:
        assert torch.equal(a, b)
    else:
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def _compare_single(device: str, optimizer: str, watched: bool, exact: bool) -> None:
    eager, r1, rec1 = _single(device, False, optimizer, watched)
    graphed, r2, rec2 = _single(device, True, optimizer, watched)
    for p, q in zip(eager, graphed):
        _same(p, q, exact)
    assert [e.global_step for e in r1.episodes] == [e.global_step for e in r2.episodes]      # the same actions
    _same(torch.tensor(r1.losses), torch.tensor(r2.losses), exact)
    assert len(rec1.losses) == len(rec2.losses) == (UPDATES if watched else 0)
    for step in range(len(rec1.losses)):
        _same(rec1.losses[step], rec2.losses[step], exact)
        for g, h in zip(rec1.grads[step], rec2.grads[step]):
            _same(g, h, exact)


def _compare_batched(device: str, watched: bool, exact: bool) -> None:
    eager, r1, rec1 = _batched(device, False, watched)
    graphed, r2, rec2 = _batched(device, True, watched)
    for p, q in zip(eager, graphed):
        _same(p, q, exact)
    for a, b in zip(r1, r2):
        _same(torch.tensor(a.losses), torch.tensor(b.losses), exact)
    for x, y in zip(rec1, rec2):
        assert len(x.losses) == len(y.losses) == (UPDATES if watched else 0)
        for g, h in zip(x.grads[-1] if watched else [], y.grads[-1] if watched else []):
            _same(g, h, exact)


@pytest.mark.parametrize("optimizer,watched", [("rmsprop_tf", False), ("rmsprop_tf", True), ("rmsprop", False)])
def test_graph_plumbing_with_a_rerun_stand_in_is_the_eager_path_on_cpu(monkeypatch, one_thread, optimizer, watched):
    monkeypatch.setattr(cuda_graphs, "Graphs", RerunGraphs)
    _compare_single("cpu", optimizer if not watched else "rmsprop_tf", watched, exact=True)


@pytest.mark.parametrize("watched", [False, True])
def test_batched_graph_plumbing_with_a_rerun_stand_in_is_the_eager_path_on_cpu(monkeypatch, one_thread, watched):
    monkeypatch.setattr(cuda_graphs, "Graphs", RerunGraphs)
    _compare_batched("cpu", watched, exact=True)


def test_cuda_graphs_are_refused_on_the_cpu_in_one_line(tmp_path, capsys):
    from pathlib import Path

    from cli_helpers import cli, one_line
    config = Path(__file__).resolve().parent.parent / "configs" / "atari_leap.yaml"
    code, _, err = cli(["train", config, "atari.a2c.cuda_graphs=true", "run.device=cpu", "--run-dir",
                        tmp_path / "r"], capsys)
    assert code == 2 and "'atari.a2c.cuda_graphs' needs a CUDA device" in one_line(err)
    assert not (tmp_path / "r").exists()
    code, _, err = cli(["train", config, "atari.a2c.cuda_graphs=true", "atari.a2c.precision=bf16", "--run-dir",
                        tmp_path / "r"], capsys)
    assert code == 2 and "set a2c.precision: fp32" in one_line(err)
    with pytest.raises(ValueError, match="CUDA device"):
        cuda_graphs.Graphs(torch.device("cpu"))


@pytest.mark.cuda
@CUDA
@pytest.mark.parametrize("optimizer,watched", [("rmsprop_tf", False), ("rmsprop_tf", True), ("rmsprop", False),
                                               ("rmsprop", True)])
def test_cuda_graphs_end_where_the_eager_path_ends(optimizer, watched):
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        _compare_single("cuda", optimizer, watched, exact=False)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


@pytest.mark.cuda
@CUDA
@pytest.mark.parametrize("watched", [False, True])
def test_cuda_graphs_of_batched_agents_end_where_the_eager_path_ends(watched):
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        _compare_batched("cuda", watched, exact=False)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


@pytest.mark.cuda
@CUDA
def test_graphed_rollout_and_update_sync_once_per_env_step():
    """With graphs a rollout and its update synchronise with the host once per env step: the copy of the sampled
    actions (torch's sync debug mode warns at every synchronising call; captures happen before it is on)."""
    import warnings

    from agents.a2c import RolloutCollector, a2c_step, graphed_a2c_step

    cfg = A2CConfig(num_envs=4, reuse_forward=False, cuda_graphs=True)
    env = make_atari("Breakout", 4, 3, backend="envpool", num_threads=1)
    model = ActorCritic(env.num_actions, generator=torch.Generator().manual_seed(0)).to("cuda")
    opt = make_optimizer(model.parameters(), cfg)
    collector = RolloutCollector([env], model, cfg.n_steps, torch.Generator(device="cuda").manual_seed(1),
                                 graphs=cuda_graphs.Graphs(torch.device("cuda")))
    before = torch.cuda.get_sync_debug_mode()
    try:
        a2c_step(model, opt, collector.collect(), cfg, env.num_actions)                  # eager: optimiser state
        for _ in range(2):                                                               # captures, then a replay
            graphed_a2c_step(collector.graphs, model, opt, collector.collect(), cfg, env.num_actions)
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            graphed_a2c_step(collector.graphs, model, opt, collector.collect(), cfg, env.num_actions)
            torch.cuda.set_sync_debug_mode(before)
    finally:
        torch.cuda.set_sync_debug_mode(before)
        env.close()
    syncs = [w for w in caught if "called a synchronizing" in str(w.message)]
    assert len(syncs) == cfg.n_steps, [str(w.message) for w in syncs]
