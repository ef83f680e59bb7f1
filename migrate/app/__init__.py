"""The application: runs a plan (execute), undoes a run (rollback), checks a pod (verify), attaches
a pod to a store (attach); and one function per command that changes or checks a pod (`migrate`,
`attach_cmd.attach`, `rollback_cmd.rollback`, `verify_cmd.verify`, `purge`), each taking a request value
and an Io (common.py) and returning an Outcome (its exit code and the values views render). Imports
migrate.core, migrate.disk and itself; never click, tqdm or tabulate."""
