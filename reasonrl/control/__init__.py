"""Control RL on gymnasium / MuJoCo / MetaWorld (`pip install 'reasonrl[control]'`; docs/control.md).

SAC of our own (sac.py), a replay buffer that keeps true rewards and episode ids (buffer.py), PEBBLE's preference
machinery (preferences.py: B-Pref teachers, query sampling; reward_model.py: the Bradley-Terry ensemble), the
labellers (labellers.py: scripted, OpenAI-compatible, local HF model, replay; trajectory_text.py: RL-SaLLM-F's prompts
and imagined states; feedback.py: its double-check and self-augmentation) and the training loop with run
directories, checkpoints and exact resume (loop.py). Only envs.py needs the extra; the rest is torch and numpy.
"""
