"""The compact id set a resume shares with every validation task."""


from latentmill.pipelines.ledger import IdSet, id_digests
from latentmill.pipelines.validate import validate_batch
from tests.unit.test_validate import rules


def test_id_set_answers_membership_for_a_batch_and_one_id():
    done = IdSet.from_ids(["a", "b", "row-7", "b"])
    assert len(done) == 3
    assert done.contains(["row-7", "c", "a", "", "b"]).tolist() == [True, False, True, False, True]
    assert "row-7" in done and "row-8" not in done
    assert IdSet.from_ids([]).contains(["a"]).tolist() == [False]


def test_id_set_holds_sixteen_bytes_per_id():
    ids = [f"row-{i:07d}" for i in range(100_000)]
    done = IdSet.from_ids(ids[::2])
    assert done.digests.nbytes == 16 * 50_000
    found = done.contains(ids)
    assert found[::2].all() and not found[1::2].any()


def test_digests_are_stable_and_distinct():
    assert id_digests(["x"])[0] == id_digests(["x"])[0]
    assert len(set(id_digests([str(i) for i in range(10_000)]).tolist())) == 10_000


def test_validation_marks_ids_of_the_set_already_done():
    import pyarrow as pa

    from latentmill import schema

    table = pa.table({"id": ["a", "b", "c"], "prompt": ["x", "y", "z"]})
    out = validate_batch(table, rules(), done=IdSet.from_ids(["b"]))
    assert list(out[schema.ERROR_STAGE]) == ["", schema.ALREADY_DONE, ""]
