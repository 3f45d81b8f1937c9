"""The noise suppressor alone: sizes, delay, flush, levels, determinism, and what it does to noisy speech."""

from __future__ import annotations

import importlib.metadata
import math
import warnings
from array import array

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.core.noise import ENGINE, NoiseSuppressor, attenuation_db
from tests.noisy_speech import correlation, lag, mix, quality, speech, suppressed, white_noise

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop


def frames_of(pcm: array[int], rate: int) -> list[bytes]:
    size = rate // 50
    return [pcm[i : i + size].tobytes() for i in range(0, len(pcm) - size + 1, size)]


def test_levels_map_linearly_to_the_maximum_attenuation_and_are_clamped() -> None:
    assert [attenuation_db(level) for level in (60, 70, 80, 85, 90, 100)] == [-15, -22, -30, -34, -38, -45]
    assert attenuation_db(0) == attenuation_db(59) == -15
    assert attenuation_db(101) == attenuation_db(1000) == -45
    steps = [attenuation_db(level) for level in range(60, 101)]
    assert steps == sorted(steps, reverse=True)
    assert NoiseSuppressor(8000, 120).level == 100 and NoiseSuppressor(8000, 120).attenuation_db == -45


@pytest.mark.parametrize("rate", [8000, 16000])
def test_every_frame_out_has_the_size_of_the_frame_in(rate: int) -> None:
    suppressor = NoiseSuppressor(rate, 85)
    noisy = mix(speech(rate), white_noise(rate * 3, seed=5), 5)[: rate * 3]
    for frame in frames_of(noisy, rate):
        assert len(suppressor.process(frame)) == len(frame) == rate // 25
    for size in (rate // 100 * 2, 2, 0, rate // 25 * 3):  # 10 ms, one sample, nothing, 60 ms
        assert len(suppressor.process(bytes(size))) == size


@pytest.mark.parametrize(("rate", "delay"), [(8000, 81), (16000, 160)])
def test_speech_comes_out_unchanged_but_for_a_fixed_delay(rate: int, delay: int) -> None:
    clean = speech(rate)
    suppressor = NoiseSuppressor(rate, 85)
    out = array("h", b"".join(suppressor.process(f) for f in frames_of(clean, rate)))
    assert suppressor.delay_samples == delay  # 10 ms (+ one sample at 8 kHz: the upsampler's)
    assert out[:delay] == array("h", bytes(2 * delay))  # the first frame leads with that silence
    assert lag(out, clean, rate) == delay
    assert correlation(out[rate + delay :], clean[rate : len(clean) - delay]) > 0.999


@pytest.mark.parametrize("rate", [8000, 16000])
def test_flush_gives_back_exactly_what_the_delay_held(rate: int) -> None:
    clean = speech(rate)
    frames = frames_of(clean, rate)
    flushed = NoiseSuppressor(rate, 85)
    out = b"".join(flushed.process(f) for f in frames)
    delay = flushed.delay_samples
    tail = flushed.flush()
    assert len(tail) == 2 * delay
    # the same as pushing silence through: the flush invents nothing and drops nothing
    fed = NoiseSuppressor(rate, 85)
    longer = b"".join(fed.process(f) for f in [*frames, bytes(rate // 25), bytes(rate // 25)])
    assert out + tail == longer[: len(out) + len(tail)]
    assert len(out) + len(tail) == 2 * (len(frames) * rate // 50 + delay)


def test_flush_before_any_audio_is_empty_and_after_it_the_suppressor_starts_over() -> None:
    suppressor = NoiseSuppressor(8000, 70)
    assert suppressor.flush() == b""
    clean = speech(8000)
    first = [suppressor.process(f) for f in frames_of(clean, 8000)[:50]]
    assert len(suppressor.flush()) == 162
    again = [suppressor.process(f) for f in frames_of(clean, 8000)[50:100]]
    assert {len(f) for f in first + again} == {320}
    assert suppressor.delay_samples == 81


@pytest.mark.parametrize("rate", [8000, 16000])
def test_it_is_deterministic(rate: int) -> None:
    noisy = mix(speech(rate), white_noise(len(speech(rate)), seed=9), 0)
    assert suppressed(noisy, rate, 85) == suppressed(noisy, rate, 85)


@pytest.mark.parametrize("rate", [8000, 16000])
def test_a_higher_level_leaves_less_noise(rate: int) -> None:
    noise = array("h", [round(2000 * z) for z in white_noise(rate * 6, seed=3)])

    def residual_db(level: int) -> float:
        """Noise out against noise in once the estimate has settled (seconds 2 to 6)."""
        suppressor = NoiseSuppressor(rate, level)
        out = array("h", b"".join(suppressor.process(frame) for frame in frames_of(noise, rate)))
        assert suppressor.output_level_db is not None and suppressor.output_level_db < -3
        settled = slice(2 * rate, None)
        return 20 * math.log10(audioop.rms(out[settled].tobytes(), 2) / audioop.rms(noise[settled].tobytes(), 2))

    levels = [residual_db(level) for level in (60, 80, 100)]
    assert levels[0] < -10 and levels[2] < -20, levels
    assert levels[0] > levels[1] + 3 > levels[2] + 3, levels


@pytest.mark.parametrize("rate", [8000, 16000])
@pytest.mark.parametrize("snr_db", [5, 0])
def test_noisy_speech_comes_out_cleaner_and_still_the_same_speech(rate: int, snr_db: int) -> None:
    clean = speech(rate)
    noisy = mix(clean, white_noise(len(clean), seed=1), snr_db)
    out = array("h", suppressed(noisy, rate, 85))
    result = quality(out, noisy, clean, rate)
    assert abs(result.snr_in - snr_db) < 0.5
    assert result.gain_db >= 6.0, result
    assert result.corr_out > 0.9 and result.corr_out > result.corr_in + 0.05, result


def test_output_level_is_none_before_audio_and_counts_frames() -> None:
    suppressor = NoiseSuppressor(16000, 85)
    assert suppressor.output_level_db is None and suppressor.frames == 0
    suppressor.process(bytes(640))
    assert suppressor.frames == 1 and suppressor.output_level_db is None  # silence in: nothing to compare


def test_the_engine_named_in_the_debug_log_is_the_one_installed() -> None:
    assert f"pyspeex-noise {importlib.metadata.version('pyspeex-noise')} " in ENGINE


def test_bad_input_is_refused_clearly() -> None:
    with pytest.raises(ValueError, match="8000 or 16000"):
        NoiseSuppressor(44100, 85)
    with pytest.raises(ValueError, match="whole number of 16-bit samples"):
        NoiseSuppressor(8000, 85).process(b"\x00\x01\x02")


@settings(max_examples=60, deadline=None)
@given(
    rate=st.sampled_from([8000, 16000]),
    level=st.integers(-10, 250),
    frames=st.lists(st.binary(max_size=1400).map(lambda b: b[: len(b) // 2 * 2]), max_size=25),
)
def test_arbitrary_pcm_never_changes_size_or_raises(rate: int, level: int, frames: list[bytes]) -> None:
    suppressor = NoiseSuppressor(rate, level)
    total = 0
    for frame in frames:
        out = suppressor.process(frame)
        assert len(out) == len(frame)
        total += len(frame)
    delay = suppressor.delay_samples
    # nothing is lost: what the delay held comes out of the flush
    assert len(suppressor.flush()) == (2 * delay if total else 0)
