"""The backward engine: one worker's share of a distributed backward pass, scheduled so every node runs once.

Nothing here touches the network. The runtime feeds a pass the gradients that arrive (the roots,
or pushes for send points) and sends on what the pass hands back (gradients for recv points);
torch's own engine does the arithmetic, the hooks and the accumulation into leaves.
"""
