"""The application: runs a plan (execute), undoes a run (rollback), checks a pod (verify), attaches
a pod to a store (attach). Imports migrate.core, migrate.disk and itself; never click, tqdm or tabulate."""
