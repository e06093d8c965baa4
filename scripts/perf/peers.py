"""The library peers, measured at the same work as the method they are compared with.

* PPO (RL², TrMRL, VariBAD): Stable-Baselines3 ``PPO("MlpPolicy")`` (64-64) on ``HalfCheetah-v5`` in a
  ``DummyVecEnv`` of 2 envs, with the method's rollout size (env steps per iteration), epochs and
  minibatch count, hence the same number of gradient updates per iteration (SB3 has no KL early stop by
  default; the methods' is turned off for these rows). Rate: env steps per second of ``learn``,
  collection included, after one warm-up iteration.
* SAC (PEARL): Stable-Baselines3 ``SAC("MlpPolicy")`` with PEARL's hidden layers (net_layers x net_size)
  and PEARL's transitions per gradient step (meta_batch x batch_size). Rate: gradient steps per second
  of ``SAC.train`` on a replay buffer filled with ``learning_starts`` random steps.

Threads as in a run of the harness: the peers act (collect) with ``torch_threads`` and update (``train``)
with the update threads of the method they are compared with (``MetaLearner.parallel_update``).
"""

from __future__ import annotations

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


def measure_sb3_ppo(job: dict[str, Any]) -> dict[str, Any]:
    """SB3 ``PPO("MlpPolicy")`` on ``job["env_id"]`` in a ``job["vec"]`` (dummy / subproc) vec env of
    ``n_envs`` envs, with the job's rollout (env steps per iteration), minibatches and epochs; ``learn``
    is timed over ``iterations`` iterations after one warm-up. Returns ``count`` (env steps),
    ``seconds``, ``work`` (``ppo_work``) and ``notes``."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

    vec_cls = {"dummy": DummyVecEnv, "subproc": SubprocVecEnv}[job["vec"]]
    n_envs, rollout, minibatches, epochs = job["n_envs"], job["rollout"], job["minibatches"], job["epochs"]
    env = make_vec_env(job["env_id"], n_envs=n_envs, seed=0, vec_env_cls=vec_cls)
    try:
        model = PPO(
            "MlpPolicy",
            env,
            n_steps=rollout // n_envs,
            batch_size=rollout // minibatches,
            n_epochs=epochs,
            device="cpu",
            seed=0,
            verbose=0,
        )
        threaded_train(model, update_threads(job))
        model.learn(rollout)  # warm-up iteration
        start = model.num_timesteps
        t0 = tic()
        model.learn(job["iterations"] * rollout, reset_num_timesteps=False)
        dt = toc(t0)
        steps = model.num_timesteps - start
    finally:
        env.close()
    return {
        "count": steps,
        "seconds": dt,
        "work": ppo_work(rollout, minibatches, epochs),
        "notes": f"{job['iterations']} it after 1 warm-up; {n_envs} envs x {rollout // n_envs} steps "
        f"({job['vec']} vec env), MlpPolicy (64, 64); update threads={update_threads(job)}",
    }


def measure_sb3_sac(job: dict[str, Any]) -> dict[str, Any]:
    """SB3 ``SAC("MlpPolicy")`` with ``net_layers`` x ``net_size`` hidden layers and batch ``batch_size``
    on ``job["env_id"]``: ``learning_starts`` random steps fill the buffer, ``warmup_grad_steps`` gradient
    steps warm up, then ``SAC.train`` is timed over ``grad_steps``. Returns ``count`` (gradient steps),
    ``seconds``, ``unit``, ``work`` (``sac_work``), ``flops_per_grad_step`` and ``notes``."""
    import gymnasium as gym
    from stable_baselines3 import SAC

    layers, size, batch = job["net_layers"], job["net_size"], job["batch_size"]
    env = gym.make(job["env_id"])
    try:
        model = SAC(
            "MlpPolicy",
            env,
            policy_kwargs={"net_arch": [size] * layers},
            batch_size=batch,
            learning_starts=job["learning_starts"],
            buffer_size=max(10_000, job["learning_starts"]),
            device="cpu",
            seed=0,
            verbose=0,
        )
        model.learn(job["learning_starts"] + 1)  # random steps into the buffer; sets up the logger
        threaded_train(model, update_threads(job))
        model.train(gradient_steps=job["warmup_grad_steps"], batch_size=batch)
        t0 = tic()
        model.train(gradient_steps=job["grad_steps"], batch_size=batch)
        dt = toc(t0)
        counted = max(1, job["warmup_grad_steps"])
        _, flops = flop_count(lambda: model.train(gradient_steps=counted, batch_size=batch))
    finally:
        env.close()
    return {
        "count": job["grad_steps"],
        "seconds": dt,
        "unit": "grad steps/s",
        "work": sac_work(layers, size, batch),
        "flops_per_grad_step": flops / counted,
        "notes": f"SAC.train({job['grad_steps']} gradient steps) after {job['warmup_grad_steps']} warm-up; "
        "twin Q + actor + entropy coefficient (PEARL: twin Q + V + target V + encoder + policy); "
        f"update threads={update_threads(job)}",
    }
