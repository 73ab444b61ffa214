from db.cli import app

app(prog_name="python -m db")
