"""One snapshot to a verdict: sensor checks, the streaming scorer, the debounced detector, the diagnosis,
and the pipeline that chains them into a `Reading`. No I/O; the agent, the trainer and the bench call it.
"""
