from qa_service.cli.main import app

app()
