"""The disk layer: what reads the trees and the store (scan, hashes, facts, probes) and the only code
that changes them (fsops; journal and lock for their own state files). Imports migrate.core and itself."""
