"""Figures: the layout (size as a function of K, panels, cells of at least 128 px, caption
strip), what each panel shows (checked against numpy re-derivations), the training hook on
generative and non-generative models, and PNGs that round-trip."""
import json
import math

import fsspec
import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import adjusted_rand_score

from genesis_dist.figures import (
    CHECKER,
    HEADER_HEIGHT,
    MIN_CELL,
    PAD,
    PALETTE,
    ROW_LABEL_WIDTH,
    caption_height,
    dataset_figure,
    decomposition_figure,
    generation_figure,
    labelled_table,
    plot_metrics,
    save_png,
    scores_caption,
    to_image_array,
)
from genesis_dist.models import is_generative
from model_factory import make_model
from genesis_dist.training.hooks import Figures
from genesis_dist.training.loop import TrainState
from genesis_dist.training.run_log import RunLogger

SIZE = 32  # model resolution; cells are upscaled ×4 to 128 px
SCALE = math.ceil(MIN_CELL / SIZE)
CELL = SIZE * SCALE
TINY_V2 = {"name": "genesis_v2", "img_size": SIZE, "encoder_filters": 8, "head_filters": 8, "decoder_filters": 8,
           "mlp_hidden": 16, "feature_dim": 16, "latent_dim": 8, "prior_hidden": 16}


def cell(figure: np.ndarray, row: int, col: int, top: int, left: int = 0, size: int = CELL) -> np.ndarray:
    """The pixels of cell (row, col) of a table whose block of cells starts at (top, left)."""
    y, x = top + PAD + row * (size + PAD), left + PAD + col * (size + PAD)
    return figure[y:y + size, x:x + size]


def upscaled(image: torch.Tensor, factor: int = SCALE) -> np.ndarray:
    """Independent quantisation (round half to even of x*255 in float32, as PNG writing
    does) and nearest upscaling (np.kron)."""
    pixels = np.round(np.clip(image.expand(3, -1, -1).permute(1, 2, 0).float().numpy(), 0, 1) * np.float32(255))
    return np.kron(pixels, np.ones((factor, factor, 1))).astype(np.uint8)


def table_size(rows: int, columns: int, caption_lines: int = 1, header: bool = True, row_labels: bool = False):
    """(height, width) of a table, derived from the layout the module documents."""
    height = caption_height(caption_lines) * (caption_lines > 0) + HEADER_HEIGHT * header + rows * (CELL + PAD) + PAD
    return height, ROW_LABEL_WIDTH * row_labels + columns * (CELL + PAD) + PAD


def tiny_model(slots: int, name: str = "genesis_v2") -> torch.nn.Module:
    torch.manual_seed(0)
    keys = {**TINY_V2, "num_slots": slots} if name == "genesis_v2" else {"img_size": SIZE, "num_slots": slots,
                                                                        "latent_dim": 8}
    keys.pop("name", None)
    return make_model(name, **keys).eval()


@pytest.mark.parametrize("slots", [2, 4])
def test_decomposition_figure_size_grows_with_k_and_holds_every_panel(slots):
    model, images = tiny_model(slots), torch.rand(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(images)
    figure = decomposition_figure(images, out.recon, out.log_masks, out.components, out.log_att_masks, caption="x")
    # columns: input, reconstruction, segmentation, K slots; rows: each image and its IC-SBP attention masks
    assert figure.dtype == np.uint8 and figure.shape == (*table_size(2 * 3, 3 + slots, row_labels=True), 3)
    top = caption_height(1) + HEADER_HEIGHT
    for b in range(3):
        image_row, attention_row = 2 * b, 2 * b + 1
        np.testing.assert_array_equal(cell(figure, image_row, 0, top, ROW_LABEL_WIDTH), upscaled(images[b]))
        np.testing.assert_array_equal(cell(figure, image_row, 1, top, ROW_LABEL_WIDTH), upscaled(out.recon[b]))
        assert (cell(figure, attention_row, 0, top, ROW_LABEL_WIDTH) == 255).all()  # blank under the input
        for k in range(slots):
            np.testing.assert_array_equal(cell(figure, attention_row, 3 + k, top, ROW_LABEL_WIDTH),
                                          upscaled(out.log_att_masks[b, k].exp()))
    # the row labels are written in the label column, the column headers above the cells
    assert (figure[top:top + CELL, :ROW_LABEL_WIDTH] < 100).any()
    assert (figure[caption_height(1):top, ROW_LABEL_WIDTH:] < 100).any()


def test_cells_are_nearest_neighbour_blocks_of_at_least_128_px():
    for size, factor in ((16, 8), (48, 3), (64, 2), (128, 1), (200, 1)):
        image = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(size))
        figure = labelled_table([[image[0]]])
        side = size * factor
        assert side >= MIN_CELL and figure.shape == (side + 2 * PAD, side + 2 * PAD, 3)
        np.testing.assert_array_equal(figure[PAD:PAD + side, PAD:PAD + side], upscaled(image[0], factor))


def test_segmentation_overlay_draws_each_slot_in_its_own_colour():
    slots = 4
    # slot k wins the k-th vertical band; the inputs are black, so the overlay is the
    # palette colour at opacity one half: floor(0.5 * colour).
    bands = torch.arange(SIZE).div(SIZE // slots, rounding_mode="floor").expand(SIZE, SIZE)
    log_masks = torch.nn.functional.one_hot(bands, slots).permute(2, 0, 1).float().mul(5).log_softmax(0)
    log_masks = log_masks[None, :, None]
    images = torch.zeros(1, 3, SIZE, SIZE)
    components = torch.rand(1, slots, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    figure = decomposition_figure(images, images, log_masks, components)
    assert figure.shape == (*table_size(1, 3 + slots, caption_lines=0), 3)  # no caption, no row labels
    overlay = cell(figure, 0, 2, HEADER_HEIGHT)
    colours = set()
    for k in range(slots):
        band = overlay[:, k * CELL // slots:(k + 1) * CELL // slots].reshape(-1, 3)
        expected = np.floor(0.5 * np.array(PALETTE[k])).astype(np.uint8)
        assert (band == expected).all(), (k, np.unique(band, axis=0), expected)
        colours.add(tuple(expected))
    assert len(colours) == slots


def test_masked_components_lie_on_a_neutral_checkerboard():
    slots = 2
    log_masks = torch.zeros(1, slots, 1, SIZE, SIZE)
    log_masks[0, 0, 0, :, : SIZE // 2], log_masks[0, 1, 0, :, SIZE // 2:] = -50.0, -50.0  # slot 1 left, 2 right
    log_masks = log_masks.log_softmax(dim=1)
    components = torch.rand(1, slots, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    images = torch.rand(1, 3, SIZE, SIZE)
    figure = decomposition_figure(images, images, log_masks, components)
    slot_1 = cell(figure, 0, 3, HEADER_HEIGHT)
    np.testing.assert_array_equal(slot_1[:, CELL // 2:], upscaled(components[0, 0])[:, CELL // 2:])  # covered
    greys = {round(g * 255) for g in CHECKER}
    uncovered = slot_1[:, : CELL // 2]
    assert {int(v) for v in np.unique(uncovered)} == greys  # the two checkerboard greys, nothing else
    assert (uncovered[..., 0] == uncovered[..., 1]).all()


def test_single_latent_vaes_and_slot_attention_get_figures():
    images = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(4))
    for name, slots in (("bd_vae", 1), ("dc_vae", 1), ("slot_attention", 3)):
        model = tiny_model(3, name)
        with torch.no_grad():
            out = model(images)
        assert out.log_masks.shape[1] == slots
        figure = decomposition_figure(images, out.recon, out.log_masks, out.components, out.log_att_masks)
        attention = out.log_att_masks is not None  # Slot Attention's attention: a second row per image
        assert attention == (name == "slot_attention")
        assert figure.shape == (*table_size(2 * (1 + attention), 3 + slots, 0, row_labels=attention), 3), name
        if is_generative(model):
            samples = model.sample(2)
            figure = generation_figure(samples.images, samples.components, samples.log_masks)
            assert figure.shape == (*table_size(2, 1 + slots, caption_lines=0), 3), name


def test_generation_figure_adds_slots_one_at_a_time():
    slots = 3
    model = tiny_model(slots)
    torch.manual_seed(5)
    with torch.no_grad():
        samples = model.sample(2)
    figure = generation_figure(samples.images, samples.components, samples.log_masks, caption="samples")
    assert figure.shape == (*table_size(2, 1 + slots), 3)
    top = caption_height(1) + HEADER_HEIGHT
    masks = samples.log_masks.exp()
    squares = np.arange(SIZE) // (SIZE // 8)  # 8×8 squares
    checker = np.where((squares[:, None] + squares[None, :]) % 2 == 0, *CHECKER)
    for n in range(2):
        np.testing.assert_array_equal(cell(figure, n, 0, top), upscaled(samples.images[n]))
        for k in range(slots):
            painted = (masks[n, : k + 1] * samples.components[n, : k + 1]).sum(0).double().numpy()
            covered = masks[n, : k + 1].sum(0).clamp(max=1).double().numpy()
            expected = torch.from_numpy(painted + (1 - covered) * checker[None])
            got = cell(figure, n, 1 + k, top).astype(int)
            assert np.abs(got - upscaled(expected).astype(int)).max() <= 1, (n, k)
        # after the last slot the masks cover everything: the composite is the sample
        assert np.abs(cell(figure, n, slots, top).astype(int) - upscaled(samples.images[n]).astype(int)).max() <= 1


def test_caption_strip_holds_the_text():
    image = torch.full((3, SIZE, SIZE), 1.0)
    plain = labelled_table([[image] * 3], ["a", "b", "c"])
    captioned = labelled_table([[image] * 3], ["a", "b", "c"], caption="step 7 · ARI-FG 0.50")
    strip = caption_height(1)
    assert captioned.shape[0] == plain.shape[0] + strip
    np.testing.assert_array_equal(captioned[strip:], plain)
    assert (captioned[:strip] < 100).any()  # dark text on the strip
    long = labelled_table([[image]], caption=" ".join(["word"] * 60))
    assert long.shape[0] - (CELL + 2 * PAD) > caption_height(2) - 1  # wrapped onto several lines


def test_scores_caption_against_sklearn():
    true = torch.tensor([[[0, 1, 1, 2], [0, 1, 2, 2]]])
    pred = torch.tensor([[[0, 0, 1, 1], [1, 0, 1, 1]]])
    log_masks = torch.nn.functional.one_hot(pred, 2).permute(0, 3, 1, 2).unsqueeze(2).float().mul(9).log_softmax(1)
    foreground = true[0] > 0
    expected = adjusted_rand_score(true[0][foreground].numpy(), pred[0][foreground].numpy())
    text = scores_caption("held-out decomposition", 12, log_masks, true, elbo=torch.tensor([-100.0, -200.0]),
                          extra={"FID": 31.25})
    assert text.startswith("held-out decomposition · step 12 · 1 images: ")
    assert f"ARI-FG {expected:.2f} (one slot 0.00)" in text and "ELBO -150 nats" in text and "FID 31.25" in text
    # mSC-FG (GENESIS Eq. 12) by hand: object 1's best IoU is 2/3, object 2's 3/4; one slot: 3/6 each
    assert f"mSC-FG {(2 / 3 + 3 / 4) / 2:.2f} (one slot 0.50)" in text
    assert "attention" not in text
    perfect = torch.nn.functional.one_hot(true, 3).permute(0, 3, 1, 2).unsqueeze(2).float().mul(9).log_softmax(1)
    with_att = scores_caption("held-out decomposition", 12, log_masks, true, log_att_masks=perfect)
    assert with_att.endswith("attention masks ARI-FG 1.00, mSC-FG 1.00")


def test_dataset_figure_tints_labels_and_leaves_background():
    images = torch.zeros(3, 3, SIZE, SIZE, dtype=torch.uint8)
    images[:, 1] = 200  # green
    labels = torch.zeros(3, SIZE, SIZE, dtype=torch.long)
    labels[:, :8, :8] = 1
    figure = dataset_figure(images, labels, columns=2, caption="toy · train")
    # two rows of samples (2 + 1), each followed by its mask row; a row-label column
    assert figure.shape == (*table_size(4, 2, header=False, row_labels=True), 3)
    top = caption_height(1)
    grey = int(0.587 * 200)  # torchvision's rgb_to_grayscale (ITU-R 601-2 luma), truncated
    masks = cell(figure, 1, 0, top, ROW_LABEL_WIDTH)
    assert (masks[8 * SCALE:, 8 * SCALE:] == grey).all()  # background: grey, untinted
    assert (masks[: 8 * SCALE, : 8 * SCALE] == np.floor(0.5 * grey + 0.5 * np.array(PALETTE[1]))).all()
    np.testing.assert_array_equal(cell(figure, 0, 0, top, ROW_LABEL_WIDTH), upscaled(images[0].float() / 255))
    assert (cell(figure, 3, 1, top, ROW_LABEL_WIDTH) == 255).all()  # no third sample in the last row


def test_figures_hook_writes_sample_figures_only_for_generative_models(tmp_path):
    images = torch.rand(8, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(6))
    masks = torch.randint(0, 3, (8, SIZE, SIZE), generator=torch.Generator().manual_seed(7))
    for name in ("genesis_v2", "slot_attention"):
        run = tmp_path / name
        logger = RunLogger(str(run))
        hook = Figures(str(run), image_every=5, total_steps=10, heldout=images, logger=logger, storage_options=None,
                       masks=masks)
        state = TrainState(model=tiny_model(3, name).train(), objective=None, optimizer=None, step=5)
        hook.after_step(state, None)
        state.step = 6
        hook.after_step(state, None)  # not an image step
        logger.close()
        written = sorted(p.name for p in (run / "figures").iterdir())
        assert written == (["decomposition_00000005.png", "samples_00000005.png"] if name == "genesis_v2"
                           else ["decomposition_00000005.png"]), name
        assert state.model.training
        with Image.open(run / "figures" / "decomposition_00000005.png") as png:
            assert png.size[0] >= 6 * CELL and png.size[1] >= 8 * CELL


def test_save_png_round_trips_tensors_and_arrays(tmp_path):
    generator = torch.Generator().manual_seed(1)
    image = torch.rand(3, 7, 9, generator=generator)
    save_png(image, str(tmp_path / "sub" / "colour.png"))
    with Image.open(tmp_path / "sub" / "colour.png") as png:
        assert png.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(png), upscaled(image, 1))
    grey = torch.rand(1, 7, 9, generator=generator)
    save_png(grey, str(tmp_path / "grey.png"))
    with Image.open(tmp_path / "grey.png") as png:
        np.testing.assert_array_equal(np.asarray(png), upscaled(grey, 1))
    array = np.arange(7 * 9 * 3, dtype=np.uint8).reshape(7, 9, 3)
    save_png(array, "memory://figs/array.png")
    with fsspec.open("memory://figs/array.png", "rb") as f, Image.open(f) as png:
        np.testing.assert_array_equal(np.asarray(png), array)
    np.testing.assert_array_equal(to_image_array(torch.from_numpy(array).permute(2, 0, 1)), array)
    every_level = np.arange(256, dtype=np.uint8).repeat(3).reshape(16, 16, 3)
    save_png(every_level, str(tmp_path / "levels.png"))
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "levels.png")), every_level)


def test_plot_metrics_writes_a_png(tmp_path):
    history = [json.loads(json.dumps({"step": s, "loss": 1 / (s + 1), "ari_fg": 0.1 * s if s % 2 else None}))
               for s in range(10)]
    plot_metrics(history, ["loss", "ari_fg"], str(tmp_path / "plots" / "metrics.png"))
    with Image.open(tmp_path / "plots" / "metrics.png") as png:
        assert png.format == "PNG" and png.size[0] > 100 and png.size[1] > 200
