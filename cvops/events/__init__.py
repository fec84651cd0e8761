"""The language of the system: event types, the log, pure projections. Imports nothing else of cvops
except :mod:`cvops.errors`."""
