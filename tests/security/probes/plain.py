"""The plainest script: with a clean environment it prints exactly one line."""

print("python ran")
