"""A learned selector: an actor-critic policy picks each knowledge term's weight as training goes.

DDPG-style (deterministic policy gradient), one decision per phase of `phase_steps` optimizer
steps (1: every step; M > 1: the multi-phase variant, M times fewer held-out evaluations and
updates):

* state s: the teacher's and the student's final representations pooled over the step's last
  micro-batch, each through its own small encoder: by default the output distributions
  (softmax of the logits, any model; with named teachers the mean over teachers), or the outputs of the modules named by
  `student_representation` / `teacher_representation` (e.g. "bert.pooler"), captured by the
  engine; plus training progress and each term's recent unweighted loss (log1p of the mean of
  the last `recent` values);
* action a in [0, 1]^K: `soft` uses a as the weights; `hard` switches term k on when
  a_k > `threshold` (at least one stays on). Each weight is multiplied by the term's own `weight`;
* reward r: the decrease of the student's task loss on a held-out batch carved from the
  training data (the engine sets `heldout_examples` of them aside; never validation or test),
  over the phase, divided by a running mean of |r| so that its scale stays put as the loss falls;
* critic Q(s, a) by temporal differences towards r + gamma * Q'(s', mu'(s')) with target networks
  (Polyak averaging, `tau`) on minibatches from a replay buffer; actor mu(s) by ascending
  Q(s, mu(s)); exploration: Gaussian noise of std `noise` on the action.

All randomness (initialisation, noise, replay sampling) comes from generators seeded by `seed`
(default: the run's), and the whole state is in `state_dict`, so a resumed run equals an
uninterrupted one. `save_policy(path)` writes the networks; `policy_path` starts from such a
file, `frozen: true` then only acts (no noise, no updates, no held-out batch).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ktransfer.capture import first_tensor, parse_spec
from ktransfer.io import atomic_path
from ktransfer.knowledge.base import KnowledgeTerm, StepView
from ktransfer.selection.base import SelectionState, SelectorContext
from ktransfer.tasks import ForwardResult

POLICY_FORMAT = "ktransfer-actor-critic/1"


def pooled_representation(value: Any, batch: dict[str, Any]) -> Tensor:
    """Mean over examples (and unpadded positions) of a captured (batch, [tokens,] width) representation."""
    h = first_tensor(value).detach().float()
    if h.dim() == 3:
        mask = batch.get("attention_mask")
        if isinstance(mask, Tensor) and mask.shape == h.shape[:2] and bool(mask.any()):
            return h[mask.bool()].mean(0).cpu()
        return h.reshape(-1, h.shape[-1]).mean(0).cpu()
    return h.reshape(h.shape[0], -1).mean(0).cpu()


def pooled_distribution(out: ForwardResult | None) -> Tensor | None:
    """Mean over targeted positions (or all rows) of softmax(logits): a (V,) summary of a model's outputs."""
    if out is None:
        return None
    logits = out.logits.detach().float()
    probs = logits.reshape(-1, logits.shape[-1]).softmax(-1)
    mask = out.mask
    if mask is not None and mask.numel() == probs.shape[0] and bool(mask.any()):
        probs = probs[mask.reshape(-1)]
    return probs.mean(0).cpu()


def mean_of_teachers(view: StepView) -> Tensor:
    """With named teachers: the mean over teachers (in name order) of their pooled output distributions.

    Its size is one teacher's, whatever their number, so identical teachers give exactly one teacher's
    summary and a policy transfers between runs with other teachers; which teacher does what the
    selector reads from each (teacher, term) pair's recent loss.
    """
    pooled = [pooled_distribution(view.teachers[name]) for name in sorted(view.teachers)]
    total = pooled[0]
    for p in pooled[1:]:
        total = total + p
    return total / len(pooled)


class _Net(nn.Module):
    """Encoders for teacher and student summaries, then an MLP over [enc_t, enc_s, extra (, action)]."""

    def __init__(self, teacher_dim: int, student_dim: int, extra_dim: int, action_dim: int, out_dim: int,
                 repr_dim: int, hidden: int, squash: bool) -> None:
        super().__init__()
        self.dims = (teacher_dim, student_dim, extra_dim)
        self.teacher_encoder = nn.Sequential(nn.Linear(teacher_dim, repr_dim), nn.Tanh())
        self.student_encoder = nn.Sequential(nn.Linear(student_dim, repr_dim), nn.Tanh())
        self.body = nn.Sequential(nn.Linear(2 * repr_dim + extra_dim + action_dim, hidden), nn.ReLU(),
                                  nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))
        self.squash = squash

    def forward(self, obs: Tensor, action: Tensor | None = None) -> Tensor:
        t_dim, s_dim, _ = self.dims
        parts = [self.teacher_encoder(obs[:, :t_dim]), self.student_encoder(obs[:, t_dim:t_dim + s_dim]),
                 obs[:, t_dim + s_dim:]]
        if action is not None:
            parts.append(action)
        out = self.body(torch.cat(parts, dim=1))
        return torch.sigmoid(out) if self.squash else out


class ActorCriticSelector:
    """Learned knowledge selection by an actor-critic policy; see the module docstring."""

    def __init__(
        self,
        mode: Literal["soft", "hard"] = "soft",
        threshold: float = 0.5,
        phase_steps: int = 1,
        heldout_examples: int = 64,
        gamma: float = 0.5,
        tau: float = 0.05,
        noise: float = 0.2,
        actor_lr: float = 1e-3,
        critic_lr: float = 1e-2,
        hidden: int = 32,
        repr_dim: int = 8,
        recent: int = 5,
        replay_size: int = 1000,
        replay_batch: int = 32,
        updates_per_phase: int = 1,
        initial_weight: float = 1.0,
        student_representation: str | None = None,
        teacher_representation: str | None = None,
        seed: int | None = None,
        policy_path: str | None = None,
        frozen: bool = False,
    ) -> None:
        if mode not in ("soft", "hard"):
            raise ValueError(f"mode: unknown value '{mode}'; valid choices: soft, hard")
        checks = {"threshold": 0.0 < threshold < 1.0, "phase_steps": phase_steps >= 1, "gamma": 0.0 <= gamma < 1.0,
                  "tau": 0.0 < tau <= 1.0, "noise": noise >= 0.0, "actor_lr": actor_lr > 0, "critic_lr": critic_lr > 0,
                  "hidden": hidden >= 1, "repr_dim": repr_dim >= 1, "recent": recent >= 1,
                  "replay_size": replay_size >= 1, "replay_batch": replay_batch >= 1,
                  "updates_per_phase": updates_per_phase >= 1, "initial_weight": 0.0 < initial_weight <= 1.0}
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"{bad[0]}={locals()[bad[0]]} is out of range (threshold and initial_weight in (0, 1], "
                             "gamma in [0, 1), tau in (0, 1], counts >= 1, rates > 0)")
        if frozen and policy_path is None:
            raise ValueError("frozen: true needs a policy_path to act with (a frozen untrained policy is random)")
        if not frozen and heldout_examples < 1:
            raise ValueError("heldout_examples must be >= 1: the reward is measured on them")
        self.mode, self.threshold, self.phase_steps = mode, threshold, phase_steps
        self.gamma, self.tau, self.noise = gamma, tau, noise
        self.actor_lr, self.critic_lr = actor_lr, critic_lr
        self.hidden, self.repr_dim, self.recent = hidden, repr_dim, recent
        self.replay_size, self.replay_batch, self.updates_per_phase = replay_size, replay_batch, updates_per_phase
        self.initial_weight = initial_weight
        self.student_representation = student_representation
        self.teacher_representation = teacher_representation
        self.seed = seed
        self.policy_path = policy_path
        self.frozen = frozen
        self._heldout_examples = heldout_examples
        self._heldout_loss: Callable[..., float] | None = None
        self._all_mean: Callable[[Tensor], Tensor] = lambda t: t
        self._term_names: list[str] | None = None
        self._policy: dict[str, Any] | None = None
        self._reset(seed if seed is not None else 0)
        if policy_path is not None:
            self._policy = load_policy(policy_path)

    # ------------------------------------------------------------------ engine hooks
    @property
    def student_modules(self) -> tuple[str, ...]:
        """Capture specs the engine hooks for this selector (the student's representation, if named)."""
        return (self.student_representation,) if self.student_representation else ()

    @property
    def teacher_modules(self) -> tuple[str, ...]:
        return (self.teacher_representation,) if self.teacher_representation else ()

    @property
    def heldout_examples(self) -> int:
        """How many training examples the engine sets aside for the reward (none when frozen)."""
        return 0 if self.frozen else self._heldout_examples

    def bind(self, context: SelectorContext) -> None:
        """Take the held-out loss, the run's seed and the term names from the engine."""
        if not self.frozen and context.heldout_loss is None:
            raise ValueError("the actor-critic selector needs the engine's held-out loss (heldout_examples > 0)")
        self._heldout_loss = context.heldout_loss
        if context.all_mean is not None:
            self._all_mean = context.all_mean
        self._term_names = list(context.term_names)
        if self.seed is None:
            self._reset(context.seed)
        if self._policy is not None:
            if self._policy["term_names"] != self._term_names:
                raise ValueError(f"policy {self.policy_path} was learnt for terms {self._policy['term_names']}, "
                                 f"this run has {self._term_names}")
            self.hidden, self.repr_dim = int(self._policy["hidden"]), int(self._policy["repr_dim"])
            self._build(*self._policy["dims"])
            for key in ("actor", "critic", "actor_target", "critic_target"):
                getattr(self, key).load_state_dict(self._policy[key])

    def _reset(self, seed: int) -> None:
        """Fresh generators and learning state (networks are built at the first observation)."""
        self._gen = torch.Generator().manual_seed(seed * 1_000_033 + 5)
        self._init_seed = seed
        self.actor: _Net | None = None
        self.critic: _Net | None = None
        self.actor_target: _Net | None = None
        self.critic_target: _Net | None = None
        self.actor_opt: torch.optim.Optimizer | None = None
        self.critic_opt: torch.optim.Optimizer | None = None
        self.replay: list[tuple[Tensor, Tensor, float, Tensor]] = []
        self._obs: Tensor | None = None
        self._phase_obs: Tensor | None = None
        self._phase_action: Tensor | None = None
        self._phase_loss: float | None = None
        self._reward_scale = 0.0
        self._weights: dict[str, float] = {}
        self.counts = {"decisions": 0, "heldout_evals": 0, "updates": 0}
        self.seconds = 0.0
        self._dims: tuple[int, int, int, int] | None = None

    def _build(self, teacher_dim: int, student_dim: int, extra_dim: int, actions: int) -> None:
        """Actor, critic and their targets, initialised from the selector's own seed (not the global RNG)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self._init_seed * 1_000_003 + 11)
            args = (teacher_dim, student_dim, extra_dim)
            self.actor = _Net(*args, 0, actions, self.repr_dim, self.hidden, squash=True)
            self.critic = _Net(*args, actions, 1, self.repr_dim, self.hidden, squash=False)
        self.actor_target = _copy(self.actor)
        self.critic_target = _copy(self.critic)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=self.actor_lr)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=self.critic_lr)
        self._dims = (teacher_dim, student_dim, extra_dim, actions)  # what a policy file must match

    # ------------------------------------------------------------------ acting
    def weights(self, terms: Sequence[KnowledgeTerm], state: SelectionState) -> dict[str, float]:
        if state.step % self.phase_steps == 0 or not self._weights:
            t0 = time.perf_counter()
            if not self.frozen and self._phase_loss is None and self._heldout_loss is not None:
                self._phase_loss = self._measure()
            action = self._act(len(terms))
            self._phase_obs = self._obs
            self._phase_action = action
            self.counts["decisions"] += 1
            self._weights = {t.name: float(a) * float(t.weight) for t, a in zip(terms, action.tolist(), strict=True)}
            self.seconds += time.perf_counter() - t0
        return dict(self._weights)

    def _act(self, k: int) -> Tensor:
        """The executed action: actor output plus noise, clipped to [0, 1]; thresholded in hard mode."""
        if self._obs is None or self.actor is None:  # nothing observed yet: every term at initial_weight
            return torch.full((k,), self.initial_weight if self.mode == "soft" else 1.0)
        with torch.no_grad():
            a = self.actor(self._obs.unsqueeze(0))[0]
        raw = a
        if not self.frozen and self.noise > 0:
            raw = a + self.noise * torch.randn(k, generator=self._gen)
            a = raw.clamp(0.0, 1.0)
        if self.mode == "soft" and not bool((a > 0).any()):  # a step needs some loss: keep the best term barely on
            a[int(raw.argmax())] = 1e-3
        if self.mode == "hard":
            on = a > self.threshold
            if not bool(on.any()):
                on[int(a.argmax())] = True
            a = on.float()
        return a

    # ------------------------------------------------------------------ learning
    def observe(self, losses: dict[str, float], state: SelectionState) -> None:
        t0 = time.perf_counter()
        self._obs = self._observation(state)
        if state.step % self.phase_steps == 0 and not self.frozen:
            now = self._measure()
            if self._phase_obs is not None and self._phase_action is not None and self._phase_loss is not None:
                raw = self._phase_loss - now
                self._reward_scale = 0.9 * self._reward_scale + 0.1 * abs(raw) if self._reward_scale else abs(raw)
                reward = raw / max(self._reward_scale, 1e-12)
                self.replay.append((self._phase_obs, self._phase_action, reward, self._obs))
                del self.replay[:-self.replay_size]
                for _ in range(self.updates_per_phase):
                    self._update()
            self._phase_loss = now
        self.seconds += time.perf_counter() - t0

    def _measure(self) -> float:
        assert self._heldout_loss is not None
        self.counts["heldout_evals"] += 1
        return float(self._heldout_loss())

    def _observation(self, state: SelectionState) -> Tensor:
        """[teacher summary, student summary, progress, log1p(recent loss) per term] as one vector."""
        view: StepView | None = state.view
        if view is None:
            raise ValueError("the actor-critic selector observes the step's outputs, but the engine gave no view")
        student = self._summary(view, "student")
        teacher = self._summary(view, "teacher")
        names = self._term_names or sorted(state.recent_losses)
        recent = []
        for name in names:
            values = state.recent_losses.get(name, [])[-self.recent:]
            recent.append(math.log1p(max(0.0, sum(values) / len(values))) if values else 0.0)
        teacher = teacher if teacher is not None else torch.zeros(1)
        summary = self._all_mean(torch.cat([teacher, student]).float())
        obs = torch.cat([summary, torch.tensor([state.progress, *recent], dtype=torch.float32)])
        dims = (teacher.numel(), student.numel(), 1 + len(names), len(names))
        if self.actor is None:
            self._build(*dims)
        elif self._dims != dims:
            raise ValueError(f"the actor-critic's networks expect inputs of sizes {self._dims} (teacher outputs, student "
                             f"outputs, progress+terms, terms) but this run gives {dims}: a policy only transfers "
                             "between runs with the same output sizes and terms")
        return obs

    def _summary(self, view: StepView, side: str) -> Tensor | None:
        """A named module's pooled output when a representation is named, else the pooled output distribution."""
        spec = self.student_representation if side == "student" else self.teacher_representation
        if spec is None and side == "teacher" and view.teachers:
            return mean_of_teachers(view)
        if spec is None:
            return pooled_distribution(view.student if side == "student" else view.teacher)
        captured = view.student_captured if side == "student" else view.teacher_captured
        key = parse_spec(spec).key
        if key not in captured:
            raise ValueError(f"{side}_representation '{spec}' was not captured (captured: {sorted(captured)}); "
                             + ("the teacher runs only when a knowledge term needs it" if side == "teacher" else ""))
        return pooled_representation(captured[key], view.batch)

    def _update(self) -> None:
        """One critic TD step and one actor step (deterministic policy gradient), then target averaging."""
        assert self.actor and self.critic and self.actor_target and self.critic_target
        assert self.actor_opt and self.critic_opt
        n = len(self.replay)
        idx = torch.randint(n, (min(self.replay_batch, n),), generator=self._gen).tolist()
        obs = torch.stack([self.replay[i][0] for i in idx])
        act = torch.stack([self.replay[i][1] for i in idx])
        rew = torch.tensor([[self.replay[i][2]] for i in idx], dtype=torch.float32)
        nxt = torch.stack([self.replay[i][3] for i in idx])
        with torch.no_grad():
            target = rew + self.gamma * self.critic_target(nxt, self.actor_target(nxt))
        critic_loss = (self.critic(obs, act) - target).pow(2).mean()
        self.critic_opt.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.critic_opt.step()
        actor_loss = -self.critic(obs, self.actor(obs)).mean()
        self.actor_opt.zero_grad(set_to_none=True)
        actor_loss.backward()
        self.actor_opt.step()
        with torch.no_grad():
            for net, tgt in ((self.actor, self.actor_target), (self.critic, self.critic_target)):
                for p, q in zip(net.parameters(), tgt.parameters(), strict=True):
                    q.mul_(1.0 - self.tau).add_(p, alpha=self.tau)
        self.counts["updates"] += 1

    # ------------------------------------------------------------------ state, policy files, log
    def metrics(self) -> dict[str, float]:
        """Counters for the log (decisions, held-out evaluations, updates) and the selector's seconds so far."""
        return {**{k: float(v) for k, v in self.counts.items()}, "seconds": round(self.seconds, 4)}

    def state_dict(self) -> dict[str, Any]:
        nets = {}
        if self.actor is not None:
            nets = {key: getattr(self, key).state_dict() for key in
                    ("actor", "critic", "actor_target", "critic_target", "actor_opt", "critic_opt")}
        return {
            "dims": self._dims, "nets": nets,
            "generator": self._gen.get_state(), "init_seed": self._init_seed,
            "replay": [(o.clone(), a.clone(), r, n.clone()) for o, a, r, n in self.replay],
            "obs": self._obs, "phase_obs": self._phase_obs, "phase_action": self._phase_action,
            "phase_loss": self._phase_loss, "reward_scale": self._reward_scale, "weights": dict(self._weights),
            "counts": dict(self.counts), "seconds": self.seconds,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._init_seed = int(state["init_seed"])
        if state["dims"] is not None:
            self._build(*state["dims"])
            for key, value in state["nets"].items():
                getattr(self, key).load_state_dict(value)
        self._gen.set_state(state["generator"])
        self.replay = [(o, a, float(r), n) for o, a, r, n in state["replay"]]
        self._obs, self._phase_obs, self._phase_action = state["obs"], state["phase_obs"], state["phase_action"]
        self._phase_loss, self._reward_scale = state["phase_loss"], float(state["reward_scale"])
        self._weights = dict(state["weights"])
        self.counts = dict(state["counts"])
        self.seconds = float(state["seconds"])

    def save_policy(self, path: str | Path) -> None:
        """Write the actor, critic and targets (and the sizes and terms they fit) to `path`, atomically."""
        if self.actor is None:
            raise ValueError("the actor-critic has not observed a step yet: there is no policy to save")
        payload = {"format": POLICY_FORMAT, "dims": list(self._dims or ()), "term_names": list(self._term_names or []),
                   "mode": self.mode, "hidden": self.hidden, "repr_dim": self.repr_dim,
                   **{key: getattr(self, key).state_dict() for key in ("actor", "critic", "actor_target", "critic_target")}}
        with atomic_path(path) as tmp:
            torch.save(payload, tmp)


def load_policy(path: str | Path) -> dict[str, Any]:
    """Read a policy written by `ActorCriticSelector.save_policy`; a missing or foreign file is a clear error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"policy_path: no policy file at {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same message
        raise ValueError(f"policy_path: {path} is not a readable policy file: {e}") from e
    if not isinstance(payload, dict) or payload.get("format") != POLICY_FORMAT:
        raise ValueError(f"policy_path: {path} is not an actor-critic policy ({POLICY_FORMAT})")
    return payload


def _copy(net: _Net) -> _Net:
    import copy

    clone = copy.deepcopy(net)
    clone.requires_grad_(False)
    return clone
