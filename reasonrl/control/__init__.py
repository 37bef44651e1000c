"""Control RL on gymnasium / MuJoCo / MetaWorld (`pip install 'reasonrl[control]'`; docs/control.md).

Online: SAC of our own (sac.py), a replay buffer that keeps true rewards and episode ids (buffer.py), PEBBLE's
preference machinery (preferences.py: B-Pref teachers, query sampling; reward_model.py: the Bradley-Terry ensemble),
the labellers (labellers.py: scripted, OpenAI-compatible, local HF model, replay; trajectory_text.py: RL-SaLLM-F's
prompts and imagined states; feedback.py: its double-check and self-augmentation) and the training loop with run
directories, checkpoints and exact resume (loop.py, runs.py).
Offline: datasets (offline_data.py; collect.py makes them from SAC runs), the preference-learned, z-scored reward
(offline_reward.py), the Decision Transformer (dt.py), DTR (dtr.py), IQL (iql.py) and their loop (offline_loop.py).
Only envs.py, collect.py and the Minari / HDF5 readers need the extra; the rest is torch and numpy.
"""
