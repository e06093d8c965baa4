"""The library peers, measured at the same work as the method they are compared with.

* PPO (RL², TrMRL, VariBAD): Stable-Baselines3 ``PPO("MlpPolicy")`` (64-64) on ``HalfCheetah-v5`` in a
  ``DummyVecEnv`` of 2 envs, with the method's rollout size (env steps per iteration), epochs and
  minibatch count, hence the same number of gradient updates per iteration (SB3 has no KL early stop by
  default; the methods' is turned off for these rows). Rate: env steps per second of ``learn``,
  collection included, after one warm-up iteration.
* SAC (PEARL): Stable-Baselines3 ``SAC("MlpPolicy")`` with PEARL's hidden layers (net_layers x net_size)
  and PEARL's transitions per gradient step (meta_batch x batch_size). Rate: gradient steps per second
  of ``SAC.train`` on a replay buffer filled with ``learning_starts`` random steps.

Each peer is a row of its own (absolute rate, memory) and, through ``PeerRounds``, runs again inside the
training row it is compared with, a round after each of the method's iterations: the row's ratio is the
median of those rounds' ratios, as the sampler rows pair with the raw simulator.

Threads as in a run of the harness: the peers act (collect) with ``torch_threads`` and update (``train``)
with the update threads of the method they are compared with (``MetaLearner.parallel_update``).
"""

from __future__ import annotations

import time
from typing import Any

from scripts.perf.measure import flop_count, ppo_work, sac_work, update_threads
from scripts.perf.profiling import tic, toc


def threaded_train(model: Any, threads: int) -> None:
    """Make ``model.train`` (the SB3 update) run with ``threads`` intra-op threads, as the harness does."""
    from benchmark.runner import intra_op_threads

    train = model.train

    def train_with_threads(*args: Any, **kwargs: Any) -> Any:
        with intra_op_threads(threads):
            return train(*args, **kwargs)

    model.train = train_with_threads


class PeerRounds:
    """A library peer set up (and warmed up) for rounds of work: ``round()`` does one learner iteration's
    worth (PPO: one ``learn`` of ``rollout`` env steps, collection included; SAC: ``SAC.train`` of
    ``grad_steps`` gradient steps) and returns (count, seconds); ``close()`` closes its envs.

    ``measure_sb3_ppo`` / ``measure_sb3_sac`` time ``iterations`` rounds as a row of their own; a training
    row with ``paired_peer`` (``measure.measure_train``) runs a round after each of its own iterations, in
    its own process, so the host's drift between rows does not enter its ratio.
    """

    def __init__(self, job: dict[str, Any]) -> None:
        self.job, self.env, self.model = job, None, None
        try:
            if job["op"] == "sb3_ppo":
                self._ppo()
            else:
                self._sac()
        except BaseException:
            self.close()
            raise

    def _ppo(self) -> None:
        from stable_baselines3 import PPO
        from stable_baselines3.common.env_util import make_vec_env
        from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

        job = self.job
        vec_cls = {"dummy": DummyVecEnv, "subproc": SubprocVecEnv}[job["vec"]]
        n_envs, rollout, minibatches = job["n_envs"], job["rollout"], job["minibatches"]
        self.env = make_vec_env(job["env_id"], n_envs=n_envs, seed=0, vec_env_cls=vec_cls)
        self.model = PPO(
            "MlpPolicy",
            self.env,
            n_steps=rollout // n_envs,
            batch_size=rollout // minibatches,
            n_epochs=job["epochs"],
            device="cpu",
            seed=0,
            verbose=0,
        )
        threaded_train(self.model, update_threads(job))
        self.model.learn(rollout)  # warm-up iteration

    def _sac(self) -> None:
        import gymnasium as gym
        from stable_baselines3 import SAC

        job = self.job
        self.env = gym.make(job["env_id"])
        self.model = SAC(
            "MlpPolicy",
            self.env,
            policy_kwargs={"net_arch": [job["net_size"]] * job["net_layers"]},
            batch_size=job["batch_size"],
            learning_starts=job["learning_starts"],
            buffer_size=max(10_000, job["learning_starts"]),
            device="cpu",
            seed=0,
            verbose=0,
        )
        self.model.learn(job["learning_starts"] + 1)  # random steps into the buffer; sets up the logger
        threaded_train(self.model, update_threads(job))
        self.model.train(gradient_steps=job["warmup_grad_steps"], batch_size=job["batch_size"])

    def round(self, profiled: bool = True) -> tuple[float, float]:
        """One round of the peer's work: (count, seconds), count in env steps (PPO) or gradient steps
        (SAC). ``profiled=False`` keeps the round out of a ``--profile`` of the row it is paired with
        (a timed region of its own otherwise: ``profiling.tic``)."""
        model, job = self.model, self.job
        assert model is not None
        t0 = tic() if profiled else time.perf_counter()
        if job["op"] == "sb3_ppo":
            start = model.num_timesteps
            model.learn(job["rollout"], reset_num_timesteps=False)
            count = float(model.num_timesteps - start)
        else:
            model.train(gradient_steps=job["grad_steps"], batch_size=job["batch_size"])
            count = float(job["grad_steps"])
        return count, toc(t0) if profiled else time.perf_counter() - t0

    def close(self) -> None:
        if self.env is not None:
            self.env.close()
            self.env = None


def measure_sb3_ppo(job: dict[str, Any]) -> dict[str, Any]:
    """SB3 ``PPO("MlpPolicy")`` on ``job["env_id"]`` in a ``job["vec"]`` (dummy / subproc) vec env of
    ``n_envs`` envs, with the job's rollout (env steps per iteration), minibatches and epochs; ``learn``
    is timed over ``iterations`` iterations after one warm-up (``PeerRounds``). Returns ``count`` (env
    steps), ``seconds``, ``work`` (``ppo_work``) and ``notes``."""
    peer = PeerRounds(job)
    try:
        rounds = [peer.round() for _ in range(job["iterations"])]
    finally:
        peer.close()
    n_envs, rollout, minibatches, epochs = job["n_envs"], job["rollout"], job["minibatches"], job["epochs"]
    return {
        "count": sum(c for c, _ in rounds),
        "seconds": sum(t for _, t in rounds),
        "work": ppo_work(rollout, minibatches, epochs),
        "notes": f"{job['iterations']} it after 1 warm-up; {n_envs} envs x {rollout // n_envs} steps "
        f"({job['vec']} vec env), MlpPolicy (64, 64); update threads={update_threads(job)}",
    }


def measure_sb3_sac(job: dict[str, Any]) -> dict[str, Any]:
    """SB3 ``SAC("MlpPolicy")`` with ``net_layers`` x ``net_size`` hidden layers and batch ``batch_size``
    on ``job["env_id"]``: ``learning_starts`` random steps fill the buffer, ``warmup_grad_steps`` gradient
    steps warm up, then ``SAC.train`` is timed over ``grad_steps`` (``PeerRounds``). Returns ``count``
    (gradient steps), ``seconds``, ``unit``, ``work`` (``sac_work``), ``flops_per_grad_step`` and
    ``notes``."""
    layers, size, batch = job["net_layers"], job["net_size"], job["batch_size"]
    peer = PeerRounds(job)
    try:
        count, dt = peer.round()
        counted = max(1, job["warmup_grad_steps"])
        model = peer.model
        _, flops = flop_count(lambda: model.train(gradient_steps=counted, batch_size=batch))
    finally:
        peer.close()
    return {
        "count": count,
        "seconds": dt,
        "unit": "grad steps/s",
        "work": sac_work(layers, size, batch),
        "flops_per_grad_step": flops / counted,
        "notes": f"SAC.train({job['grad_steps']} gradient steps) after {job['warmup_grad_steps']} warm-up; "
        "twin Q + actor + entropy coefficient (PEARL: twin Q + V + target V + encoder + policy); "
        f"update threads={update_threads(job)}",
    }
