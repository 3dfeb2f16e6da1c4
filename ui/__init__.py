"""Everything a person or a program talks to: the `foster` CLI, the service, the app."""
