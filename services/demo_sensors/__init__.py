"""Demo-only HTTP sensors (a motion detector), so that a fresh demo shows HTTP polling at work
without hardware. Not part of an instance's four processes."""
