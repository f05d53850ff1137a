"""Indexing and serving on a Ray cluster, for collections one machine cannot hold.

Ray is an optional extra (`pip install 'qa-service[ray]'`): nothing outside this package imports
it, and the single-machine service never loads it.
"""
