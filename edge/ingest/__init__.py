"""The serial stream to snapshots: the frame guard, the stream clock, snapshot assembly, the scoring
cadence and the accounting of lost data. Knows frames, not models.
"""
