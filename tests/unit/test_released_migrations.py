"""Released migrations never change: a database migrated with one must find the same text later."""

from __future__ import annotations

from pipeline.migrations import SUPERSEDED, load

# Add a line when a new migration is released; never change one.
RELEASED = {
    "0001_init.sql": "b1039d46c4dba28bfa894864f415299105c3a7ab16ffe0f03cc1cba96d65f898",
    "0002_segments.sql": "7a08f56bc0305a95a4683ae63a126c04b17b0121b01c43b1467fd38e4e36f316",
    "0003_hybrid_search.sql": "6e248f715128d0b986adfc5fb89f20e8ce1548b18c0ee0409a7d9c93c4178c15",
    "0004_trigger_privileges.sql": "7f0d88ab6b92df02e8f3d86dcb608e236f3ff6b6265f3897c27e728faa0bf621",
    "0005_secure_by_default.sql": "2907f2d9500701548e2e002ad62685916ed90be4be89219cc929f8810e8fdd40",
    "0006_sources.sql": "2d3d1b1f66cecb7b9ae4c347ae2f12c62ccef341055cba2c020f282d6661ab01",
    "0007_segments_per_source.sql": "0d498b36fd0a2bf4f3f2c58a096656a44405a4a5338558bb3c145642414e9940",
    "0008_dores_full_text.sql": "92a73981ecce2aa1e4d28b3c570d51d60e8a900e07bd5f4a84c6dc7917adc66d",
    "0009_classifiers.sql": "a41be0089ac73d41090eea895e09f65168aaf73a24096d7711ea79fbf8309278",
    "0010_vectors_waiting_for_the_index.sql": "dfec92104c08b0ad4408010651fdea281a2d855d86975839636694815894f88f",
    "0011_trust_flows_downward.sql": "ec8f7b7f2223514cb9e998d8a6fe5cf1c9b28d56752f0f6afa2c656888bf7be9",
    "0012_one_vector_column.sql": "f39b4a01e481b34627419f48ddeafdf5980054d01e391cc04f70283d51f30288",
}


def test_released_migrations_keep_their_checksums() -> None:
    current = {m.name: m.checksum for m in load()}
    for name, checksum in RELEASED.items():
        assert current.get(name) == checksum, f"sql/{name} changed after its release: put the change in a new file"


def test_every_migration_is_released_here() -> None:
    assert sorted(m.name for m in load()) == sorted(RELEASED), "add the new migration's checksum to RELEASED"


def test_superseded_checksums_belong_to_released_files() -> None:
    assert set(SUPERSEDED) <= set(RELEASED)
