"""The source mixer (`data.kind: mixture`): batches drawn from several corpora with weights that
change at phase boundaries, the phases' lengths drawn from the seed, the leading source picked
by a seeded schedule or by an Exp3 bandit rewarded with the batch-loss change.

A phase lasts `phase_min`..`phase_max` steps (uniform). Its weights put `lead_share` on one
source, the lead, and split the rest evenly over the others. Each sentence of a batch picks its
source by those weights, then a sentence of that source uniformly.

schedule `seeded`: the lead is drawn uniformly among the sources other than the last lead.
schedule `bandit`: Exp3 (Auer, Cesa-Bianchi, Freund & Schapire 2002, "The nonstochastic
multiarmed bandit problem"): one round per phase, one arm per source; the lead is drawn from
p_i = (1 - gamma) w_i / sum w + gamma / K; at the end of the phase the lead gets the reward
r = clip((L_head - L_tail) / L_head, 0, 1), the relative drop of the batch loss from the
phase's first HEAD steps to its last HEAD steps (the learning progress of Graves et al. 2017,
"Automated curriculum learning for neural networks"), and w_lead *= exp(gamma r / p_lead / K).
"""

from __future__ import annotations

import math

import torch

HEAD = 3  # steps averaged at each end of a phase for the bandit's reward


class Exp3:
    """Exp3 over K arms; weights kept as logs so that long runs cannot overflow."""

    def __init__(self, K: int, gamma: float):
        self.K, self.gamma = K, gamma
        self.log_w = [0.0] * K

    def probs(self) -> list[float]:
        top = max(self.log_w)
        w = [math.exp(x - top) for x in self.log_w]
        return [(1 - self.gamma) * wi / sum(w) + self.gamma / self.K for wi in w]

    def update(self, arm: int, reward: float) -> None:
        x_hat = reward / self.probs()[arm]  # importance-weighted: unbiased over the draw
        self.log_w[arm] += self.gamma * x_hat / self.K


def progress_reward(losses: list[float]) -> float:
    """Relative drop of the batch loss over a phase: first HEAD steps against last HEAD."""
    if not losses:  # no loss was observed (a sampler driven without training)
        return 0.0
    head = sum(losses[:HEAD]) / len(losses[:HEAD])
    tail = sum(losses[-HEAD:]) / len(losses[-HEAD:])
    if not (math.isfinite(head) and math.isfinite(tail)) or head <= 0:
        return 0.0
    return min(1.0, max(0.0, (head - tail) / head))


class MixtureSampler:
    """Seeded stream of batches over sources; `phase` describes the current phase (what
    phases.jsonl records), `observe(loss)` hands it each step's batch loss."""

    def __init__(self, sources: list[list[int]], names: list[str], batch_size: int, seed: int,
                 schedule: str = "seeded", phase_min: int = 7, phase_max: int = 42,
                 lead_share: float = 0.8, gamma: float = 0.2):
        self.sources, self.names, self.batch_size = sources, names, batch_size
        self.schedule, self.lead_share = schedule, lead_share
        self.phase_min, self.phase_max = phase_min, phase_max
        self.gen = torch.Generator().manual_seed(seed)
        self.bandit = Exp3(len(sources), gamma)
        self.step = 0
        self.phase: dict | None = None  # the current phase's record
        self.losses: list[float] = []  # batch losses of the current phase

    def state_dict(self) -> dict:
        return {"gen": self.gen.get_state(), "step": self.step, "phase": self.phase,
                "losses": list(self.losses), "log_w": list(self.bandit.log_w)}

    def load_state_dict(self, state: dict) -> None:
        self.gen.set_state(state["gen"])
        self.step, self.phase = state["step"], state["phase"]
        self.losses, self.bandit.log_w = list(state["losses"]), list(state["log_w"])

    def weights(self, lead: int) -> list[float]:
        K = len(self.sources)
        rest = (1 - self.lead_share) / (K - 1)
        return [round(self.lead_share if i == lead else rest, 6) for i in range(K)]

    def _new_phase(self) -> None:
        K, last = len(self.sources), self.phase
        reward, probs = None, None
        if self.schedule == "bandit":
            if last is not None:
                reward = progress_reward(self.losses)
                self.bandit.update(last["lead"], reward)
            probs = self.bandit.probs()
            lead = int(torch.multinomial(torch.tensor(probs), 1, generator=self.gen))
        else:
            others = [i for i in range(K) if last is None or i != last["lead"]]
            lead = others[int(torch.randint(len(others), (1,), generator=self.gen))]
        length = int(torch.randint(self.phase_min, self.phase_max + 1, (1,), generator=self.gen))
        self.phase = {"step": self.step, "phase": 0 if last is None else last["phase"] + 1,
                      "length": length, "lead": lead, "lead_name": self.names[lead],
                      "weights": dict(zip(self.names, self.weights(lead))),
                      "probs": None if probs is None else dict(zip(self.names, probs)),
                      "reward_prev": reward}
        self.losses = []

    def next_ids(self) -> list[int]:
        if self.phase is None or self.step >= self.phase["step"] + self.phase["length"]:
            self._new_phase()
        self.step += 1
        w = torch.tensor(list(self.phase["weights"].values()))
        picks = torch.multinomial(w, self.batch_size, replacement=True, generator=self.gen)
        ids = []
        for s in picks.tolist():
            src = self.sources[s]
            ids.append(src[int(torch.randint(len(src), (1,), generator=self.gen))])
        return ids

    def observe(self, loss: float) -> None:
        self.losses.append(loss)
