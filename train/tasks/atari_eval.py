"""Held-out Atari evaluation: every held-out game is trained from the meta-learned initialisation and from a
random initialisation, over several seeds, with the same A2C settings and the same seeds for both.
``eval.random_init: false`` leaves the random initialisation out: its runs depend on the config seed and the
games only, so among runs of one seed (the transfer study's) one run evaluates it and `metarl report` compares
every run with that one (train/report_data.py).

Each held-out run (game, initialisation, seed) is saved when it ends, and an evaluation of the same run
directory under the same settings reads it back instead of running it again (train/tasks/atari_eval_parts.py):
an evaluation interrupted in ``metarl train`` continues on ``--resume`` and ends as an uninterrupted one would.

Outputs in the run directory:
- TensorBoard: each initialisation is a run of its own, ``eval/meta_init`` and ``eval/random_init``, with the
  same tags, so TensorBoard draws both on one card per game: ``eval/<game>/episodic_return`` (mean over seeds
  of the running mean of the last ``window`` finished games — ``atari.eval_window`` — on a grid of env
  steps); for games with published reference scores also ``eval/<game>/human_normalised``, and, with more than
  one such game, ``eval/mean/human_normalised`` (the mean over them). Their sample std over seeds is in a section
  of its own, ``eval_std/…`` with the same rest of the tag (none for one seed). Each seed is a run too,
  ``eval/<init>/seed_<k>``, with
  ``eval_seeds/<game>/episodic_return`` (its own running mean: a card of its own, all seeds of both inits) and
  RMSprop's accumulator quantiles over the run, ``optim/<game>/*`` (agents/a2c.py ``rmsprop_stats``).
  All of it is written at the end, from the parts (the GIFs below too), each of these runs from step 0 on: what
  an interrupted evaluation wrote there is replaced, not repeated;
- ``eval_atari.png``: mean ± ``atari.eval_band`` sample standard deviations over seeds per game, both
  initialisations (labelled as the table and `metarl plot` label them, with their seed count);
- ``eval_atari.json`` (``{"split": "test", "games": {...}}``) and ``eval_atari.md``: per game and
  initialisation (:func:`summarise`), the final score and the AUC, mean and sample std over seeds
  (``final_score``, ``final_score_std``, ``auc``, ``auc_std``), where references exist the same human-normalised
  (``final_human_normalised``, ``human_normalised_auc``, their ``_std``), the min–max normalised AUC (where
  both initialisations were evaluated), and per seed the lists ``final_scores``, ``auc_scores``,
  ``final_human_normalised_scores``, ``human_normalised_auc_scores`` (what `metarl report` reads; the tables
  are computed from them). ``mean_human_normalised`` (eval.json): per initialisation, each seed's mean over the
  games with references, then mean and sample std over seeds (``final``, ``final_std``, ``auc``, ``auc_std``).
  A std is null for one seed. Results written before these definitions (population std, the AUC of the
  seed-mean curve) still read: their tables are recomputed from the per-seed lists;
- with ``eval.video``: ``videos/<game>_<init>.mp4``, one game played by seed 0's agent at the end of its run
  (the real 210×160 RGB screens, at most ``eval.video_frames`` of them, 15 per second: envs/atari.py), and
  the same as an animated GIF in TensorBoard's images dashboard, ``videos/<game>`` in each ``eval/<init>``
  run; listed in the result under ``videos``.

These are the test split's (``eval.split: test``, the default). Another split — ``metarl eval RUN --split val``
— writes its own: ``eval_atari_val.{json,md,png}``, TensorBoard runs ``eval_val/<init>``, videos under
``videos/val/``, parts under ``eval_parts/val/``, so it never replaces the test results; a split without games
is refused.

:func:`summary` is the result as a plain-text table (``metarl train`` and ``metarl eval`` print it last).

The AUC (one definition, train/stats.py, for every output): per seed, the mean of its running-score curve over
the grid points from the first at or after ``atari.auc_start`` (0 by default, so that a warm-up can be left out;
eval.json says where: ``auc_from_env_step``) to the horizon; for the initialisation, the mean over seeds of
those per-seed AUCs.

Normalisations: (1) per game, the AUC mapped to [0, 1] by the lowest and highest point that either
initialisation's seed-mean curve reaches: the min–max normalised AUC, which compares the two
initialisations on one game. (2) The human-normalised score (score − random) / (human − random) with the
published random and human reference scores (train/atari_scores.py) — the Leap paper plots "normalised
scores" without saying which normalisation; we use this one. The final score is the mean true game score
(raw reward over whole games) of the last ``eval_games`` games of each seed's run.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from envs.atari import VIDEO_FPS

from ..atari_scores import REFERENCE, human_normalised
from ..checkpoint import write_bytes_atomic, write_json_atomic, write_text_atomic
from ..commands import command
from ..errors import UserError
from ..seeding import FIXED, step_generators
from ..names import init_labels, result_name, tb_prefix
from ..stats import curve_mean_std, mean_std, pm, seed_auc
from .atari_eval_parts import FORMAT, Parts, final_score, fingerprint, part_settings
from .atari_eval_parts import curve as part_curve

INITS = ("meta_init", "random_init")


def running_curve(steps: np.ndarray, returns: np.ndarray, grid: np.ndarray, window: int) -> np.ndarray:
    """At each grid step, the mean return of the last ``window`` games finished by then (NaN before any)."""
    out = np.full(len(grid), np.nan)
    for i, g in enumerate(grid):
        done = returns[steps <= g]
        if len(done):
            out[i] = done[-window:].mean()
    return out


def normalise_curve(game: str, mean: np.ndarray, std: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A raw-score curve (mean, std over seeds) in human-normalised units (an affine map per game)."""
    random, human = REFERENCE[game]
    return (mean - random) / (human - random), std / abs(human - random)


def evaluate_atari(cfg: Any, adapter: Any, meta: Any, run_dir: Path, step: int, logger: Any = None,
                   points: int = 50, window: int | None = None, world: Any = None) -> dict[str, Any]:
    """Run the protocol with ``adapter`` (an :class:`~train.tasks.atari.AtariAdapter`: ``games``, ``game``,
    ``build_model``, ``make_optimizer``, ``adapt``, ``drain_games``, ``evaluate``) and write the outputs.
    ``window``: games in each moving average (default ``atari.eval_window``). Held-out runs finished by an
    earlier evaluation of ``run_dir`` under the same settings are read back (train/tasks/atari_eval_parts.py).

    ``world`` (train/distributed.py; torchrun ranks): rank 0 reads back the finished parts; the runs left are
    split into contiguous blocks in the protocol's order (``World.block``: a game's runs stay together, so a
    rank batches them under ``a2c.batched``), each rank runs its block, and rank 0 saves every part — the
    others send theirs (with their videos) — and writes the outputs; the other ranks return {}. Each run is
    seeded on its own (:func:`_agent`), so one by one the parts are those one process makes, bit for bit;
    batched, each part is equal up to float summation order (its batch holds the runs of its rank's block)."""
    from ..distributed import World
    world = world or World()
    window = window or getattr(adapter.config, "eval_window", 10)
    band = getattr(adapter.config, "eval_band", 1.0)
    split = cfg.eval.split
    games = adapter.games.get(split)
    if not games:       # never the test games in their place: their parts and files would carry the wrong split
        raise UserError(f"atari.{split}_games is empty: there are no {split} games to evaluate")
    seeds = cfg.eval.tasks
    horizon = cfg.eval.steps or cfg.inner.steps
    grid = np.linspace(horizon / points, horizon, points)
    # AUCs leave out the grid points before atari.auc_start (the warm-up; never the last point)
    start = min(int(np.searchsorted(grid, getattr(adapter.config, "auc_start", 0))), points - 1)
    inits = INITS if cfg.eval.random_init else ("meta_init",)
    video = cfg.eval.video
    show = cfg.run.progress and world.is_main
    parts = Parts(run_dir, split)
    settings = {init: part_settings(cfg, adapter, meta, init, horizon, points, window) for init in inits}
    runs = [(game, init, seed) for game in games for init in inits for seed in range(seeds)]
    done = {}                   # finished by an earlier evaluation: read back, not run again (rank 0 reads them)
    for game, init, seed in runs if world.is_main else []:
        part = parts.load(game, init, seed, settings[init], cfg.eval.video_frames if video and seed == 0 else None)
        if part is not None:
            done[(game, init, seed)] = part
    if parts.note():
        print(parts.note(), file=sys.stderr)
    mine = world.block(world.broadcast([run for run in runs if run not in done]))      # this rank's share
    bar, progress = _bar(adapter, len(mine) * horizon) if show and mine else (None, None)
    if show and done:
        _say(bar, f"held-out: {len(done)} of {len(runs)} runs read from {parts.folder} (finished earlier)")
    if show and world.size > 1:
        _say(bar, f"held-out: {len(runs) - len(done)} runs spread over {world.size} ranks ({len(mine)} on rank 0)")
    outbox = Outbox(run_dir, parts, world.is_main, local=world.one_node)
    finished: dict[tuple[str, str, int], dict[str, Any]] = {}
    if adapter.config.a2c.batched:
        # a2c.batched: a game's unfinished (init, seed) runs of this rank train at once, as one stacked model
        for game in games:
            todo_game = [(init, seed) for g, init, seed in mine if g == game]
            if todo_game:
                finished.update(run_parts_batched(cfg, adapter, meta, run_dir, outbox.save, game, todo_game,
                                                  settings, horizon, grid, window, video, bar, progress, show))
    for game, init, seed in mine:
        if (game, init, seed) not in finished:
            finished[(game, init, seed)] = run_part(cfg, adapter, meta, run_dir, outbox.save, game, init, seed,
                                                    settings[init], horizon, grid, window, video and seed == 0, bar,
                                                    progress, show)
    if world.size > 1:
        for sent in world.gather(outbox.sent) or []:        # rank 0: every rank's parts (its own list is empty)
            finished.update(outbox.receive(sent))
    if not world.is_main:
        return {}
    finished = {run: done.get(run) or finished[run] for run in runs}         # the protocol's order, however they ran
    curves: dict[tuple[str, str], np.ndarray] = {}
    seed_curves: dict[tuple[str, str], np.ndarray] = {}       # (seeds, points) raw running means
    finals: dict[tuple[str, str], list[float]] = {}
    videos: dict[str, dict[str, dict[str, Any]]] = {}
    gifs: dict[tuple[str, str], Path] = {}
    for game in games:
        for init in inits:
            group = [finished[(game, init, seed)] for seed in range(seeds)]
            seed_curves[(game, init)] = np.stack([part_curve(p) for p in group])
            finals[(game, init)] = [final_score(p) for p in group]
            if video:
                videos.setdefault(game, {})[init] = group[0]["video"]["entry"]
                gifs[(game, init)] = parts.folder / group[0]["video"]["gif"]
    curves = {key: np.stack(curve_mean_std(stacked)) for key, stacked in seed_curves.items()}     # mean, sample std
    table = summarise(games, seed_curves, finals, start)
    mean_hns = mean_normalised(games, seed_curves)
    out = {"step": step, "split": split, "horizon_env_steps": horizon, "seeds": seeds, "window": window,
           "auc_from_env_step": float(grid[start]), "games": table}
    if videos:
        out["videos"] = videos
    if mean_hns:
        out["mean_human_normalised"] = mean_over_games(table, mean_hns["games"])
    if bar is not None:
        progress.finish()
        bar.close()
        from ..progress import RLProgress
        RLProgress.detach(adapter)
    # TensorBoard gets the whole evaluation here, from the parts, fresh or read back: each evaluation run
    # (eval/<init>, eval/<init>/seed_<k>) is written from step 0 on, which hides whatever an earlier,
    # interrupted or other-settings evaluation wrote there (Logger.evaluation), so no point shows twice.
    tb = tb_prefix(split)
    if logger is not None:
        for (game, init), gif in gifs.items():
            logger.gif(f"{tb}/{init}", f"videos/{game}", gif.read_bytes(), horizon)
        for (game, init, seed), part in finished.items():        # RMSprop's warm-up, per held-out run
            for step, stats in part.get("optimizer") or []:
                logger.evaluation(f"{tb}/{init}/seed_{seed}", {f"optim/{game}/{k}": v for k, v in stats.items()}, step)
    write_outputs(run_dir, games, grid, curves, table, logger, band=band, mean_hns=mean_hns, seed_curves=seed_curves,
                  method=cfg.method, split=split)
    if show:        # the table itself comes last, from the command (summary)
        name = result_name(split)
        print(f"table: {run_dir / (name + '.md')}\nplot: {run_dir / (name + '.png')}\n"
              f"TensorBoard: {command('tensorboard', '--logdir', run_dir)}", file=sys.stderr)
    return out


class Outbox:
    """Where a rank's finished parts go: saved at once by rank 0 and by every rank of a one-node run (``local``:
    they share its disk), so a run killed before the ranks gather keeps every finished part; a rank on another
    node keeps them, with their GIF and MP4 bytes, in ``sent`` for rank 0, which saves them (:meth:`receive`) —
    the nodes need not share a file system. A local rank's part goes to rank 0 too (as saved, without bytes)."""

    def __init__(self, run_dir: Path, parts: Parts, main: bool, local: bool = False) -> None:
        self.run_dir, self.parts, self.main, self.local = Path(run_dir), parts, main, local
        self.sent: list[tuple[dict[str, Any], bytes | None, bytes | None]] = []

    def save(self, part: dict[str, Any], gif: bytes | None = None) -> dict[str, Any]:
        """``Parts.save``'s contract: the part as a later evaluation reads it back."""
        if self.main or self.local:
            saved = self.parts.save(part, gif)
            if not self.main:
                self.sent.append((saved, None, None))
            return saved
        mp4 = (self.run_dir / part["video"]["entry"]["file"]).read_bytes() if gif is not None else None
        self.sent.append((part, gif, mp4))
        return part

    def receive(self, sent: list) -> dict[tuple[str, str, int], dict[str, Any]]:
        """Rank 0: save another node's parts (MP4 first, then the part: its JSON marks it finished); a local
        rank's are on disk already."""
        out = {}
        for part, gif, mp4 in sent:
            if mp4 is not None:
                write_bytes_atomic(self.run_dir / part["video"]["entry"]["file"], mp4)
            key = (part["game"], part["init"], part["seed"])
            out[key] = part if self.local else self.parts.save(part, gif)
        return out


def run_part(cfg: Any, adapter: Any, meta: Any, run_dir: Path, save: Any, game: str, init: str, seed: int,
             settings: dict[str, Any], horizon: int, grid: np.ndarray, window: int, video: bool, bar: Any,
             progress: Any, show: bool) -> dict[str, Any]:
    """One held-out run — ``game`` from ``init`` with seed index ``seed`` — saved as a part (``save``:
    ``Outbox.save``) and returned as read back. ``video``: also record one game of the final agent."""
    t0 = time.perf_counter()
    if progress is not None:
        progress.new_task()
    task, model, params = _agent(cfg, adapter, meta, game, init, seed)
    optimizer = adapter.make_optimizer(model, params, cfg.inner)
    adapter.drain_games()
    start = adapter.global_step
    adapter.adapt(task, model, optimizer, horizon)
    played = adapter.drain_games()
    s = np.array([g.global_step - start for g in played], dtype=np.float64)
    r = np.array([g.episodic_return for g in played], dtype=np.float64)
    final = adapter.evaluate(task, model)
    # the lowest and highest game score behind the curve and the final score: bounds they must lie within
    scored = [*r.tolist(), *(g.episodic_return for g in getattr(adapter, "last_scored", []))]
    part = {"format": FORMAT, "fingerprint": fingerprint(settings), "settings": settings, "game": game,
            "init": init, "seed": seed, "curve": running_curve(s, r, grid, window), "final_score": final["score"],
            "final_games": int(final["games"]), "games": len(played), "env_steps": adapter.global_step - start,
            "returns": [float(min(scored)), float(max(scored))] if scored else None,
            "optimizer": [[step, stats] for step, stats in adapter.last_result.optimizer_stats]}
    if show:
        _say(bar, f"held-out {game} {init.replace('_', ' ')} seed {seed + 1}/{cfg.eval.tasks}: final score "
                  f"{final['score']:.1f} ({len(played)} games, {adapter.global_step - start:,} env steps, "
                  f"{time.perf_counter() - t0:.0f} s)")
    gif = None
    if video:
        entry, gif = record_video(adapter, task, model, run_dir, game, init, cfg.eval.video_frames, cfg.eval.split)
        part["video"] = {"entry": entry, "max_frames": cfg.eval.video_frames}
        if show:
            _say(bar, f"video: {run_dir / entry['file']} ({entry['frames']} frames, score "
                      f"{entry['score']:.0f}{'' if entry['game_over'] else ', cut before game over'})")
    return save(part, gif)


def _agent(cfg: Any, adapter: Any, meta: Any, game: str, init: str, seed: int) -> tuple[Any, Any, Any]:
    """(task, model, optimiser) of one held-out run, drawn as :func:`run_part` draws them."""
    # The same env seed and the same head draw for both initialisations of a (game, seed), whatever ran before.
    rng, generator = step_generators(cfg.seed, FIXED, 1000 + seed)
    task = adapter.game(game, int(rng.integers(2**31 - 1)))
    model = adapter.build_model(generator, task)      # drawn on the CPU, on the run's device
    if init == "meta_init":
        meta.load_init(model, skip=tuple(adapter.head))
    return task, model, meta.task_parameters(model)


def run_parts_batched(cfg: Any, adapter: Any, meta: Any, run_dir: Path, save: Any, game: str,
                      todo: list[tuple[str, int]], settings: dict[str, dict[str, Any]], horizon: int,
                      grid: np.ndarray, window: int, video: bool, bar: Any, progress: Any,
                      show: bool) -> dict[tuple[str, str, int], dict[str, Any]]:
    """The held-out runs ``todo`` ((init, seed) pairs) of ``game`` trained at once as one stacked model
    (``atari.a2c.batched``; agents/batched_a2c.py); each saved as the part :func:`run_part` would save, from the
    same model draw, env seed and sampling generator: the same run up to float summation order."""
    t0 = time.perf_counter()
    if progress is not None:
        progress.new_task()
    agents = [_agent(cfg, adapter, meta, game, init, seed) for init, seed in todo]
    for _, model, params in agents:
        if len(params) != len(list(model.parameters())):
            raise ValueError(f"atari.a2c.batched trains every parameter of a task model; {cfg.method} steps "
                             f"{len(params)} of {len(list(model.parameters()))}")
    tasks, models = [a[0] for a in agents], [a[1] for a in agents]
    adapter.drain_games()
    results = adapter.adapt_batched(tasks, models, horizon)
    adapter.drain_games()
    seconds = time.perf_counter() - t0
    out = {}
    for (init, seed), task, model, result in zip(todo, tasks, models, results):
        played = result.episodes
        s = np.array([g.global_step for g in played], dtype=np.float64)
        r = np.array([g.episodic_return for g in played], dtype=np.float64)
        final = adapter.evaluate(task, model, games=played)
        part = {"format": FORMAT, "fingerprint": fingerprint(settings[init]), "settings": settings[init],
                "game": game, "init": init, "seed": seed, "curve": running_curve(s, r, grid, window),
                "final_score": final["score"], "final_games": int(final["games"]), "games": len(played),
                "env_steps": result.env_steps, "optimizer": [[step, stats] for step, stats in result.optimizer_stats]}
        if show:
            _say(bar, f"held-out {game} {init.replace('_', ' ')} seed {seed + 1}/{cfg.eval.tasks}: final score "
                      f"{final['score']:.1f} ({len(played)} games, {result.env_steps:,} env steps, batched: "
                      f"{len(todo)} runs in {seconds:.0f} s)")
        gif = None
        if video and seed == 0:
            entry, gif = record_video(adapter, task, model, run_dir, game, init, cfg.eval.video_frames)
            part["video"] = {"entry": entry, "max_frames": cfg.eval.video_frames}
            if show:
                _say(bar, f"video: {run_dir / entry['file']} ({entry['frames']} frames, score "
                          f"{entry['score']:.0f}{'' if entry['game_over'] else ', cut before game over'})")
        out[(game, init, seed)] = save(part, gif)
    return out


def record_video(adapter: Any, task: Any, model: Any, run_dir: Path, game: str, init: str,
                 max_frames: int, split: str = "test") -> tuple[dict[str, Any], bytes]:
    """One game of ``model`` as ``run_dir/videos/<game>_<init>.mp4`` (another split's under ``videos/<split>/``:
    a game in both lists keeps both videos); returns what the result lists and the game as an animated GIF (for
    TensorBoard, logged with the evaluation's curves)."""
    from ..video import encode_gif, write_mp4

    frames, score, over = adapter.record_episode(task, model, max_frames)
    folder = run_dir / "videos" if split == "test" else run_dir / "videos" / split
    path = write_mp4(folder / f"{game}_{init}.mp4", frames, VIDEO_FPS)
    entry = {"file": str(path.relative_to(run_dir)), "frames": len(frames), "score": score, "game_over": over}
    return entry, encode_gif(frames, VIDEO_FPS)


# Per statistic of a row of eval.json: its mean's key and the list of its per-seed values. Tables show the mean ±
# sample std of the per-seed list (train/stats.py) where the row has one — results written before the sample std
# and the per-seed AUC then read as new ones do —, else the stored mean and std.
STATISTICS = {"final score": ("final_score", "final_scores", 1), "AUC": ("auc", "auc_scores", 1),
              "human-normalised final": ("final_human_normalised", "final_human_normalised_scores", 3),
              "human-normalised AUC": ("human_normalised_auc", "human_normalised_auc_scores", 3)}


def cell(row: dict[str, Any], statistic: str, game: str) -> str:
    """One statistic of ``game``'s eval.json row as "mean ± sample std" (STATISTICS); "n/a": no game finished;
    "no reference": a human-normalised value of a game without reference scores; "—": not recorded."""
    key, per_seed, digits = STATISTICS[statistic]
    if key.startswith(("final_human", "human")) and game not in REFERENCE:
        return "no reference"
    if per_seed in row:
        return pm(*mean_std(row[per_seed]), digits)
    return pm(row[key], row.get(f"{key}_std"), digits) if key in row else "—"


def summary(result: dict[str, Any], method: str = "meta-learned", note: str = "", last_games: int = 0) -> str:
    """The held-out result (what eval.json holds) as a plain-text table: per game the random and the
    meta-learned initialisation, the final score and the AUC, raw and human-normalised, each the mean ± sample
    std over seeds; then, with more than one game with reference scores, their mean; and ``note`` as the last
    line. ``last_games``: the games a run's score averages (``atari.eval_games``), for the header."""
    label = init_labels(method)
    rows = [("game", "init", *STATISTICS)]
    for game, by_init in (result.get("games") or {}).items():
        for init in ("random_init", "meta_init"):
            r = by_init.get(init)
            if r is not None:
                rows.append((game, label[init], *(cell(r, k, game) for k in STATISTICS)))
    for init in ("random_init", "meta_init"):
        m = (result.get("mean_human_normalised") or {}).get(init)
        if m is not None and len(m.get("games", [])) > 1:          # one game: its own row says it
            rows.append((f"mean of {_plural(len(m['games']), 'game')}", label[init], "", "",
                         pm(m.get("final"), m.get("final_std"), 3), pm(m.get("auc"), m.get("auc_std"), 3)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    last = _plural(last_games, "game") if last_games else "games"
    horizon = result.get("horizon_env_steps", 0)
    start = result.get("auc_from_env_step")
    lines = [f"held-out games: {horizon:,} env steps per run, {_plural(result.get('seeds', 0), 'seed')} per game "
             f"and initialisation; mean ± sample std over seeds (— for one seed)",
             f"final score: the mean true score of a run's last {last}; AUC: a run's mean running score over "
             + (f"env steps {start:,.0f}–{horizon:,}" if start is not None else f"its grid to env step {horizon:,}")
             + ", averaged over seeds"]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines + ([note] if note else []))


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _bar(adapter: Any, total: int) -> tuple[Any, Any]:
    """A bar over the protocol's env steps (a tqdm bar, or log lines: train/progress.py), moved by the adapter's
    hooks."""
    from ..progress import RLProgress, progress_bar
    bar = progress_bar(total, "held-out evaluation", "env step")
    return bar, RLProgress(bar, start_step=adapter.global_step, count_steps=True).attach(adapter)


def _say(bar: Any, line: str) -> None:
    if bar is not None:
        bar.write(line, file=sys.stderr)
    else:
        print(line, file=sys.stderr)


def mean_normalised(games: list[str], seed_curves: dict) -> dict[str, Any]:
    """Per initialisation, the mean over the games with reference scores of each seed's human-normalised
    curve, then mean and sample std over seeds: {"games": [...], "curves": {init: (mean, std)}}; {} without such
    games. (TensorBoard's ``eval/mean/human_normalised``; the result's numbers are :func:`mean_over_games`.)"""
    known = [g for g in games if g in REFERENCE]
    if not known:
        return {}
    result = {}
    for init in (i for i in INITS if (known[0], i) in seed_curves):
        per_seed = np.mean([(seed_curves[(g, init)] - REFERENCE[g][0]) / (REFERENCE[g][1] - REFERENCE[g][0])
                            for g in known], axis=0)                      # (seeds, points)
        result[init] = curve_mean_std(per_seed)
    return {"games": known, "curves": result}


def mean_over_games(table: dict, known: list[str]) -> dict[str, dict[str, Any]]:
    """Per initialisation, the human-normalised final score and AUC averaged over the games ``known`` (those with
    reference scores), per seed, then mean and sample std over seeds: the result's ``mean_human_normalised``."""
    out = {}
    for init in (i for i in INITS if all(i in table[g] for g in known)):
        per_game = {key: np.array([table[g][init][key] for g in known], dtype=np.float64)      # (games, seeds)
                    for key in ("final_human_normalised_scores", "human_normalised_auc_scores")}
        final, final_std = mean_std(per_game["final_human_normalised_scores"].mean(0))
        auc, auc_std = mean_std(per_game["human_normalised_auc_scores"].mean(0))
        out[init] = {"games": known, "final": final, "final_std": final_std, "auc": auc, "auc_std": auc_std}
    return out


def summarise(games: list[str], seed_curves: dict, finals: dict, start: int = 0) -> dict[str, dict[str, dict]]:
    """Per game and evaluated initialisation, from each seed's curve (``seed_curves``: (seeds, points)) and final
    score: the final score and the AUC (train/stats.py: per seed, the mean of its curve from grid point ``start``
    — the first at or after ``atari.auc_start`` — to the horizon; then the mean over seeds), each with its sample
    std over seeds and its per-seed list (``final_scores``, ``auc_scores``); with reference scores the same
    human-normalised (``final_human_normalised``, ``human_normalised_auc``, ...; an affine map per game, so the
    mean of the normalised seeds is the normalised mean); and where both initialisations were evaluated the
    min–max normalised AUC, ``normalised_auc``: the AUC mapped by the lowest and highest point either
    initialisation's seed-mean curve reaches (it compares the two on one game)."""
    table: dict[str, dict[str, dict[str, Any]]] = {}
    for game in games:
        inits = [i for i in INITS if (game, i) in seed_curves]
        both = np.concatenate([curve_mean_std(seed_curves[(game, i)])[0][start:] for i in inits])
        lo, hi = (np.nanmin(both), np.nanmax(both)) if np.isfinite(both).any() else (0.0, 1.0)
        span = hi - lo if hi > lo else 1.0
        table[game] = {}
        for init in inits:
            finals_ = [float(f) for f in finals[(game, init)]]
            aucs = [seed_auc(c, start) for c in seed_curves[(game, init)]]
            (final, final_std), (auc, auc_std) = mean_std(finals_), mean_std(aucs)
            row = table[game][init] = {}
            if len(inits) == len(INITS):
                row["normalised_auc"] = float((auc - lo) / span)
            row.update({"final_score": final, "final_score_std": final_std, "auc": auc, "auc_std": auc_std,
                        "final_scores": finals_, "auc_scores": aucs})
            if game in REFERENCE:
                hns = [human_normalised(game, f) for f in finals_]
                hauc = [human_normalised(game, a) for a in aucs]
                (hn, hn_std), (ha, ha_std) = mean_std(hns), mean_std(hauc)
                row.update({"final_human_normalised": hn, "final_human_normalised_std": hn_std,
                            "human_normalised_auc": ha, "human_normalised_auc_std": ha_std,
                            "final_human_normalised_scores": hns, "human_normalised_auc_scores": hauc})
    return table


def _log_finite(logger: Any, run: str, values: dict[str, float], step: int) -> None:
    """``values`` that are finite (no NaN point: a mean before any game finished, a spread of one seed)."""
    finite = {k: float(v) for k, v in values.items() if np.isfinite(v)}
    if finite:
        logger.evaluation(run, finite, step)


def write_outputs(run_dir: Path, games: list[str], grid: np.ndarray, curves: dict, table: dict, logger: Any,
                  band: float = 1.0, mean_hns: dict | None = None, seed_curves: dict | None = None,
                  method: str = "meta-learned", split: str = "test") -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    label = init_labels(method)
    tb = tb_prefix(split)
    if logger is not None:
        # the means in eval/, their sample std over seeds in a section of its own, eval_std/ (train/stats.py)
        for (game, init), (mean, std) in curves.items():
            hns = normalise_curve(game, mean, std) if game in REFERENCE else None
            for i, x in enumerate(grid):
                values = {f"eval/{game}/episodic_return": mean[i], f"eval_std/{game}/episodic_return": std[i]}
                if hns is not None:
                    values.update({f"eval/{game}/human_normalised": hns[0][i],
                                   f"eval_std/{game}/human_normalised": hns[1][i]})
                _log_finite(logger, f"{tb}/{init}", values, int(x))
        # the mean over games only where there are several (one game's would repeat its own card)
        curves_mean = (mean_hns or {}).get("curves", {}) if len((mean_hns or {}).get("games", [])) > 1 else {}
        for init, (mean, std) in curves_mean.items():
            for x, m, sd in zip(grid, mean, std):
                _log_finite(logger, f"{tb}/{init}", {"eval/mean/human_normalised": m,
                                                     "eval_std/mean/human_normalised": sd}, int(x))
        for (game, init), stacked in (seed_curves or {}).items():
            for k, curve in enumerate(stacked):
                for x, v in zip(grid, curve):
                    if np.isfinite(v):
                        logger.evaluation(f"{tb}/{init}/seed_{k}", {f"eval_seeds/{game}/episodic_return": float(v)},
                                          int(x))
    fig, axes = plt.subplots(1, len(games), figsize=(5 * len(games), 3.8), squeeze=False)
    for ax, game in zip(axes[0], games):
        for init in (i for i in INITS if (game, i) in curves):
            mean, std = curves[(game, init)]
            n = len(seed_curves[(game, init)]) if seed_curves else None
            ax.plot(grid, mean, label=label[init] + (f" (n={n})" if n else ""),
                    marker="o" if np.isfinite(mean).sum() <= 20 else None, markersize=3)
            ax.fill_between(grid, mean - band * std, mean + band * std, alpha=0.2)     # none where std is NaN
        ax.set_title(f"{game} ({split} split)")
        ax.set_xlabel("env steps")
        ax.set_ylabel(f"episodic return (true score), ± {band:g} sample std")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    name = result_name(split)
    import io
    png = io.BytesIO()                  # matplotlib writes in place: a kill mid-write would truncate the figure
    fig.savefig(png, format="png", dpi=110)
    plt.close(fig)
    write_bytes_atomic(run_dir / f"{name}.png", png.getvalue())
    lines = [f"Held-out evaluation on the {split} games: mean ± sample std over seeds (— for one seed); AUC: the "
             f"mean over seeds of each seed's mean running score; min–max AUC: the AUC mapped to [0, 1] by the lowest "
             f"and highest point of the two initialisations' mean curves.", "",
             "| game | init | seeds | " + " | ".join(STATISTICS) + " | min–max AUC |",
             "|---|---|---|" + "---|" * (len(STATISTICS) + 1)]
    for game, rows in table.items():
        for init, r in rows.items():
            minmax = f"{r['normalised_auc']:.3f}" if "normalised_auc" in r else "—"    # one init: nothing to compare
            lines.append(f"| {game} | {label[init]} | {len(r['final_scores'])} | "
                         + " | ".join(cell(r, k, game) for k in STATISTICS) + f" | {minmax} |")
    write_text_atomic(run_dir / f"{name}.md", "\n".join(lines) + "\n")
    write_json_atomic(run_dir / f"{name}.json", {"split": split, "games": table})
