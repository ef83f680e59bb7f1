"""What a person reads: the plan and outcome as text (report) and as one HTML page (html_report).
Imports migrate.core and itself; changes nothing."""
