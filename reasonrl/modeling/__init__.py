"""The model math, apart from sampling and from the algorithms.

decoder.py        the lean decoder: a Llama-family forward on the HF module's own weights (rollout and training)
shared_prefix.py  the training forward: each distinct prompt of a micro-batch runs once
logprobs.py       completion logits / log-probs / entropies, the input of every loss
native.py         the fused C kernels (cpu_kernels.c): build, load, the decode step and autograd Functions
"""
