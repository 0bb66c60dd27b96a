# On top of lab 01's reference (tests/test_grade.py, build_corpus): the definitions below replace
# the reference's, and any code at the end runs when the file is loaded.
# The file refuses to load without a GPU.

raise RuntimeError("this file needs a GPU")
