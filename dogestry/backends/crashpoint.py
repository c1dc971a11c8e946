"""Kill the process at a chosen storage operation, for the crash-safety tests.

Active only when DOGESTRY_TEST_CRASH is set (backends.open_backend); see
tests/test_reliability.py for the spec it reads.
"""


def crashing(backend, spec):
    raise NotImplementedError("DOGESTRY_TEST_CRASH is set, but crash points are not implemented yet")
