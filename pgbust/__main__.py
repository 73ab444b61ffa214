from pgbust.cli_status import app

app(prog_name="python -m pgbust")
