"""FilterCommand (docs/behaviour.md §6): the run and its rules (run.py), the environment
(environment.py), the process and its group kill (process.py), the verdict (verdict.py).
The spec types are in `trio_proxsmtp.stages.settings`.

May import: `trio_proxsmtp.common`, `trio_proxsmtp.protocol` and `trio_proxsmtp.stages`.
"""
