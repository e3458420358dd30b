"""Everything that touches PostgreSQL or Redis: pools, embedded servers, migrations, stores.

``storage`` knows nothing of ``modi_sync``; callers get plain dataclasses, never rows.
"""
