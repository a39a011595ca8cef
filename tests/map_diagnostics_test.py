"""scripts/map_diagnostics.py: the outer ring of a map's cells, the interior
peak, each patch's similarity to its image's mean feature, the cell of a
box's centre of mass, the silent-object test by kind, and the audio-swap test
(each image's own clip against another group's), each against a loop or a
case whose answer is known."""
import types

import numpy as np

from soundloc_jax.evaluation import annotations, objects
from tests.helpers import import_script

map_diagnostics = import_script("map_diagnostics")


def test_ring_holds_exactly_the_border_cells():
  ring = map_diagnostics.ring_mask(6, 6)
  assert ring.sum() == 20 and not ring[1:-1, 1:-1].any() and ring[0].all() and ring[:, -1].all()


def test_interior_maps_peak_on_the_best_inner_cell():
  """After resizing to 224 the peak of each interior map lies in the pixels of
  its best inner cell (a loop over cells); maps whose peak is already inside
  keep their pointing result."""
  from soundloc_jax.evaluation import protocol
  rng = np.random.default_rng(1)
  maps = rng.normal(size=(40, 6, 6)).astype(np.float32)
  maps[:20, 0, 0] = 9.0  # the ring wins on half of them, an inner cell on the rest
  maps[20:, 2, 3] = 9.0
  inner = map_diagnostics.interior_maps(maps)
  peaks = protocol.peak_indices(inner, 224)
  for m, peak in zip(maps, peaks):
    best = max(((r, c) for r in range(1, 5) for c in range(1, 5)), key=lambda rc: m[rc])
    row, col = divmod(int(peak), 224)
    assert (row * 6 // 224, col * 6 // 224) == best
  gt = np.stack([annotations.box_gt_map([[80, 80, 150, 150]], size=224)] * 40)
  inside = ~map_diagnostics.ring_mask(6, 6).reshape(-1)[maps.reshape(40, -1).argmax(axis=1)]
  assert inside.sum() == 20
  np.testing.assert_array_equal(protocol.pointing_hits(inner, gt)[inside],
                                protocol.pointing_hits(maps, gt)[inside])


def test_mean_feature_similarity_is_each_patch_cosine_with_its_image_mean():
  rng = np.random.default_rng(3)
  visual = rng.normal(size=(3, 4, 5, 6))
  got = map_diagnostics.mean_feature_similarity(visual)
  for i in range(3):
    mean = visual[i].reshape(-1, 6).mean(axis=0)
    for r in range(4):
      for c in range(5):
        v = visual[i, r, c]
        assert abs(got[i, r, c] - v @ mean / np.linalg.norm(v) / np.linalg.norm(mean)) < 1e-12


def test_box_cells_are_the_cells_of_each_boxs_centre():
  """Boxes on a 224 grid scored on a 6 x 6 map: a loop over boxes, from the
  box coordinates themselves, gives the same cells."""
  rng = np.random.default_rng(0)
  boxes, maps = [], []
  for _ in range(30):
    x0, y0 = rng.integers(0, 200, 2)
    box = [x0, y0, x0 + rng.integers(4, 24), y0 + rng.integers(4, 24)]
    boxes.append(box)
    maps.append(annotations.box_gt_map([box], size=224))
  got = map_diagnostics.box_cells(np.stack(maps), 6, 6)
  for (x0, y0, x1, y1), (row, col) in zip(boxes, got):
    ys, xs = np.nonzero(annotations.box_gt_map([[x0, y0, x1, y1]], size=224))
    assert (row, col) == (int(ys.mean() * 6 // 224), int(xs.mean() * 6 // 224))


def test_silent_scores_by_kind_average_each_image_object_pair_of_a_kind():
  """Images with 1-3 silent objects of random kinds: the per-kind means equal
  a loop over (image, object) pairs of the definition (the sounding object's
  mean heat above the silent one's; a tie counts 1/2)."""
  rng = np.random.default_rng(2)
  n, size = 25, 16

  def box_map():
    x0, y0 = rng.integers(0, size - 5, 2)
    return annotations.box_gt_map([[x0, y0, x0 + rng.integers(2, 5), y0 + rng.integers(2, 5)]],
                                  size=size)

  responses = rng.normal(size=(n, 4, 4)).astype(np.float32)
  responses[4] = 0.5  # a constant map: ties
  sounding = np.stack([box_map() for _ in range(n)])
  silent = [np.stack([box_map() for _ in range(rng.integers(1, 4))]) for _ in range(n)]
  kinds = [list(rng.choice(["seen", "unseen", "never sounds"], size=len(s))) for s in silent]
  maps, valid = objects.pad_silent_maps(silent)
  outputs = types.SimpleNamespace(responses=responses, gt_maps=sounding, silent_maps=maps,
                                  silent_valid=valid)
  got = map_diagnostics.silent_scores_by_kind(outputs, kinds, size)
  expected = {}
  for i in range(n):
    heat = np.asarray(objects.resize_bilinear(responses[i], size), np.float64)
    ours = (heat * sounding[i]).sum() / sounding[i].sum()
    for m, kind in zip(silent[i], kinds[i]):
      theirs = (heat * m).sum() / m.sum()
      expected.setdefault(kind, []).append(1.0 if ours > theirs else 0.5 if ours == theirs else 0.0)
  assert set(got) == set(expected)
  for kind, values in expected.items():
    assert got[kind][1] == len(values)
    assert abs(got[kind][0] - np.mean(values)) < 1e-12


def test_other_group_partners_pair_each_item_with_another_group():
  groups = np.array(["a", "b", "c", "a", "b", "a", "c", "c"])
  partners = map_diagnostics.other_group_partners(groups, seed=4)
  assert all(groups[j] != g for g, j in zip(groups, partners))
  assert len(set(partners.tolist())) > 1  # random, not one fixed item
  with np.testing.assert_raises_regex(ValueError, "no other group"):
    map_diagnostics.other_group_partners(["a", "a"])


def test_cosine_maps_are_each_patch_cosine_with_its_audio():
  rng = np.random.default_rng(5)
  visual, audio = rng.normal(size=(3, 2, 4, 5)), rng.normal(size=(3, 5))
  got = map_diagnostics.cosine_maps(visual, audio)
  for i in range(3):
    for r in range(2):
      for c in range(4):
        v, a = visual[i, r, c], audio[i]
        assert abs(got[i, r, c] - v @ a / np.linalg.norm(v) / np.linalg.norm(a)) < 1e-12


def _swap_outputs(audio_follows_group: bool):
  """Images whose sounding object's cells carry their group's audio direction
  and whose silent object's cells a direction no sound has: 4 x 4 maps, 16 px
  boxes. With `audio_follows_group` False every clip embeds alike."""
  n, size, d = 12, 16, 5
  groups = np.array(["a", "b", "c"] * 4)
  direction = {"a": 0, "b": 1, "c": 2}
  visual = np.zeros((n, 4, 4, d))
  visual[..., 4] = 1.0  # background
  visual[:, 0, 0] = np.eye(d)[3]  # the silent object, top-left cell
  audio = np.zeros((n, d))
  for i, g in enumerate(groups):
    visual[i, 2:, 2:] = np.eye(d)[direction[g]]  # the sounding object, bottom-right cells
    audio[i, direction[g] if audio_follows_group else 0] = 1.0
  if not audio_follows_group:
    visual[:, 2:, 2:] = np.eye(d)[0]
  sounding = np.stack([annotations.box_gt_map([[8, 8, 16, 16]], size=size)] * n)
  silent = np.stack([annotations.box_gt_map([[0, 0, 4, 4]], size=size)] * n)[:, None]
  outputs = types.SimpleNamespace(visual=visual, audio=audio, gt_maps=sounding,
                                  silent_maps=silent, silent_valid=np.ones((n, 1), bool),
                                  responses=map_diagnostics.cosine_maps(visual, audio))
  return outputs, groups, size


def test_audio_swap_finds_maps_that_follow_the_sound():
  """Own clip: the sounding object is the hottest (1.0). Another group's
  clip is orthogonal to every cell, so the two objects tie (0.5)."""
  outputs, groups, size = _swap_outputs(audio_follows_group=True)
  own, other, corr = map_diagnostics.audio_swap_scores(outputs, groups, size)
  np.testing.assert_array_equal(own, 1.0)
  np.testing.assert_array_equal(other, 0.5)
  assert abs(corr - 1.0) < 1e-9


def test_audio_swap_finds_maps_that_ignore_the_sound():
  """Every clip embeds alike: swapping changes no map, so no score."""
  outputs, groups, size = _swap_outputs(audio_follows_group=False)
  own, other, _ = map_diagnostics.audio_swap_scores(outputs, groups, size)
  np.testing.assert_array_equal(own, other)
  np.testing.assert_array_equal(own, 1.0)


def test_means_by_group_and_group_cosines_against_loops():
  rng = np.random.default_rng(6)
  groups = rng.choice(["x", "y", "z"], size=30)
  values, audio = rng.random(30), rng.normal(size=(30, 4))
  got = map_diagnostics.means_by_group(values, groups)
  for g in "xyz":
    chosen = [v for v, h in zip(values, groups) if h == g]
    assert got[g][1] == len(chosen) and abs(got[g][0] - np.mean(chosen)) < 1e-12
  unit = audio / np.linalg.norm(audio, axis=1, keepdims=True)
  same = [unit[i] @ unit[j] for i in range(30) for j in range(30) if i != j and groups[i] == groups[j]]
  different = [unit[i] @ unit[j] for i in range(30) for j in range(30) if groups[i] != groups[j]]
  within, across = map_diagnostics.group_cosines(audio, groups)
  assert abs(within - np.mean(same)) < 1e-12 and abs(across - np.mean(different)) < 1e-12


def test_nearest_groups_against_a_loop():
  """Each clip's nearest reference group by cosine with the groups' mean unit
  embeddings, against a loop; clips drawn around one group's centre land on it."""
  rng = np.random.default_rng(7)
  centres = rng.normal(size=(3, 8)) * 3
  ref_groups = np.repeat(["p", "q", "r"], 10)
  reference = centres.repeat(10, axis=0) + rng.normal(size=(30, 8))
  audio = np.concatenate([centres[[2]] + 0.3 * rng.normal(size=(5, 8)), rng.normal(size=(15, 8))])
  got = map_diagnostics.nearest_groups(audio, reference, ref_groups)
  assert (got[:5] == "r").all()
  unit = reference / np.linalg.norm(reference, axis=1, keepdims=True)
  for a, name in zip(audio, got):
    best, best_cos = None, -2.0
    for g in ("p", "q", "r"):
      c = unit[ref_groups == g].mean(axis=0)
      cos = a @ c / np.linalg.norm(a) / np.linalg.norm(c)
      if cos > best_cos:
        best, best_cos = g, cos
    assert name == best
