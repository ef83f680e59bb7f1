"""The application layer: one function per command that changes or checks a pod (`migrate`, `attach`,
`rollback`, `verify`, `purge`), each taking a request value and an Io (app.common) and returning an
Outcome (exit code, JSON document, what the text output shows). No click, tqdm or tabulate here:
cli.py parses the options, builds the request, asks, and prints the outcome."""
