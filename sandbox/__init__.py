"""The local lab (test hosts with real sshd and systemd, a databend-meta stand-in, fault injection).

Never imported by product code. Entry points: `python -m sandbox ...` and `sandbox.lab.Lab`.
"""
