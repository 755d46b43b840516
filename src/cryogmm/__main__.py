from cryogmm.cli import run

run()
