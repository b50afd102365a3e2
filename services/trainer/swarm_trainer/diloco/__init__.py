"""DiLoCo mode: local inner steps, pseudo-gradients averaged through hivemind every H steps, an outer Nesterov step.

Each peer runs its inner optimizer (AdamW / 8-bit AdamW) on every local batch. After `inner_steps` (H) batches it
all-reduces its pseudo-gradient (the outer parameters the round started from minus its local parameters) with the
other peers and applies an outer Nesterov SGD step to the outer parameters, which are identical on every peer.

Modules, pure rules first:
- outer.py: the outer Nesterov step and the pseudo-gradient;
- compression.py: what goes on the wire (none, fp16, int8, top-k blocks with error feedback);
- rounds.py: round bookkeeping (matchmaking keys, who to wait for, the inner LR's step index);
- averager.py: the hivemind DecentralizedAverager that carries pseudo-gradients and serves the outer state;
- optimizer.py: DiLoCoOptimizer, the inner optimizer plus rounds, overlapped with the next inner steps;
- fused.py: the inner optimizer stepped inside the backward pass, and bf16 weights.
"""
