from rscrisis.cli.main import run

run()
