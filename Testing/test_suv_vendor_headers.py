"""SUVbw factors of 8 real vendor PET headers (suv_vendor_headers, from cornerstonejs/calculate-suv,
MIT) against the published factors in expected_suvbw_factors.csv (absolute tolerance 1e-6), and the
SUV rules of PHYSICS.md §1 on hand-built headers."""
from __future__ import annotations

import csv
import json
import math
from datetime import datetime

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from PETDiffusionLib.errors import InputError, MissingTagError
from PETDiffusionLib.physics.suv import bsa_dubois_m2, lbm_janmahasatian_kg, suv_factor
from PETDiffusionLib.physics.suv_rules import SUVLimits

RADIOPHARM_KEYWORDS = {"RadiopharmaceuticalStartTime", "RadiopharmaceuticalStartDateTime",
                       "RadionuclideTotalDose", "RadionuclideHalfLife"}
PHILIPS_CREATOR = "Philips PET Private Group"


def build_dataset(instance: dict) -> Dataset:
    """A pydicom Dataset from the JSON: radiopharmaceutical keywords go into
    RadiopharmaceuticalInformationSequence, Philips factors into private group 7053 as on the
    scanner ((7053,1000) SUV Scale Factor, (7053,1009) Activity Concentration Scale Factor)."""
    ds, rp = Dataset(), Dataset()
    for key, value in instance.items():
        if isinstance(value, str):
            value = value.strip()
        if key == "PhilipsPETPrivateGroup":
            if value:
                block = ds.private_block(0x7053, PHILIPS_CREATOR, create=True)
                if "SUVScaleFactor" in value:
                    block.add_new(0x00, "DS", value["SUVScaleFactor"].strip())
                if "ActivityConcentrationScaleFactor" in value:
                    block.add_new(0x09, "DS", value["ActivityConcentrationScaleFactor"].strip())
        elif key in RADIOPHARM_KEYWORDS:
            setattr(rp, key, value)
        else:
            setattr(ds, key, value)
    ds.RadiopharmaceuticalInformationSequence = Sequence([rp])
    return ds


def _cases(shared_data):
    folder = shared_data / "suv_vendor_headers"
    rows = list(csv.DictReader(open(folder / "expected_suvbw_factors.csv")))
    assert len(rows) == 8
    return folder, rows


def test_all_8_vendor_headers_give_the_published_suvbw_factor(shared_data):
    folder, rows = _cases(shared_data)
    for row in rows:
        instances = json.loads((folder / f"{row['case']}-instances.json").read_text())
        factor = suv_factor([build_dataset(i) for i in instances], "bw")
        assert factor.factor == pytest.approx(float(row["expected_suvbw_factor"]),
                                              abs=float(row["tolerance_abs"])), \
            f"{row['case']}: {factor.rule}"


def test_philips_cnts_uses_the_private_suv_scale_factor(shared_data):
    folder, _ = _cases(shared_data)
    inst = json.loads((folder / "PHILIPS_CNTS_AND_SUV-instances.json").read_text())
    factor = suv_factor([build_dataset(i) for i in inst])
    assert factor.factor == pytest.approx(0.000728)
    assert "(7053,1000)" in factor.rule


def _bqml_header(**changes) -> Dataset:
    """70 kg, 250 MBq F-18 at 10:00, series at 11:00 (PHYSICS.md §1 worked number)."""
    inst = {"Units": "BQML", "DecayCorrection": "START", "PatientWeight": "70",
            "PatientSex": "M", "PatientSize": "1.75",
            "SeriesDate": "20250101", "SeriesTime": "110000", "AcquisitionDate": "20250101",
            "AcquisitionTime": "110000", "RadionuclideTotalDose": "250000000",
            "RadionuclideHalfLife": "6586.2", "RadiopharmaceuticalStartTime": "100000",
            "CorrectedImage": ["ATTN", "DECY"]}
    inst.update(changes)
    return build_dataset({k: v for k, v in inst.items() if v is not None})


def test_worked_number_70kg_250mbq_60min_gives_suv1_at_2_44_kbq_per_ml():
    f = suv_factor(_bqml_header())
    assert f.decayed_dose_bq / 1e6 == pytest.approx(171.1, abs=0.1)
    assert 1.0 / f.factor / 1000 == pytest.approx(2.44, abs=0.01)


def test_injection_after_scan_time_means_the_day_before():
    f = suv_factor(_bqml_header(SeriesDate="20250102", SeriesTime="003000",
                                AcquisitionDate="20250102", AcquisitionTime="003000",
                                RadiopharmaceuticalStartTime="233000"))
    assert f.injection_time == datetime(2025, 1, 1, 23, 30)
    assert (f.reference_time - f.injection_time).total_seconds() == 3600


def test_ge_private_scan_datetime_is_the_reference_when_series_time_is_after_acquisition():
    # a post-processed series: SeriesTime 11:30 after the acquisition at 11:00
    ds = _bqml_header(SeriesTime="113000")
    ds.private_block(0x0009, "GEMS_PETD_01", create=True).add_new(0x0D, "DT", "20250101110000")
    f = suv_factor(ds)
    assert f.reference_time == datetime(2025, 1, 1, 11, 0)
    assert "(0009,100D)" in f.rule


def test_admin_decay_correction_uses_the_undecayed_dose():
    f = suv_factor(_bqml_header(DecayCorrection="ADMIN"))
    assert f.factor == pytest.approx(70_000 / 250e6)


def test_sul_bsa_ibw_on_request_scale_suvbw_by_mass_or_area():
    bw = suv_factor(_bqml_header()).factor
    # Janmahasatian, male 70 kg 1.75 m: BMI 22.857 -> 9270·70/(6680 + 216·22.857) = 55.86 kg
    assert lbm_janmahasatian_kg(70, 1.75, "M") == pytest.approx(55.86, abs=0.01)
    assert suv_factor(_bqml_header(), "lbm").factor == pytest.approx(bw * 55.86 / 70, rel=2e-4)
    # Du Bois, 70 kg 175 cm: 0.007184·70^0.425·175^0.725 = 1.848 m²
    assert bsa_dubois_m2(70, 1.75) == pytest.approx(1.848, abs=0.001)
    assert suv_factor(_bqml_header(), "bsa").factor == pytest.approx(
        bw * 18481 / 70_000, rel=2e-4)
    # IBW male 175 cm: 48.0 + 1.06·(175 − 152) = 72.38 kg
    assert suv_factor(_bqml_header(), "ibw").factor == pytest.approx(bw * 72.38 / 70, rel=1e-6)
    assert suv_factor(_bqml_header(), "lbm").units == "SUVlbm"


def test_decay_correction_none_corrects_each_frame_with_the_integral_factor():
    # one 10-min frame starting 60 min after injection: DCF = λΔt / (e^-λt1 − e^-λt2)
    f = suv_factor(_bqml_header(DecayCorrection="NONE", ActualFrameDuration="600000"))
    lam = math.log(2) / 6586.2
    dcf = lam * 600 / (math.exp(-lam * 3600) - math.exp(-lam * 4200))
    assert f.factor == pytest.approx(70_000 / 250e6 * dcf, rel=1e-9)


def test_missing_suv_tags_are_named():
    with pytest.raises(MissingTagError) as err:
        suv_factor(_bqml_header(PatientWeight=None, RadionuclideTotalDose=None), path="/study/pet")
    assert any("PatientWeight" in m for m in err.value.missing)
    assert any("RadionuclideTotalDose" in m for m in err.value.missing)
    assert "/study/pet" in str(err.value) and "--weight-kg" in str(err.value)


def test_manual_overrides_replace_missing_weight_dose_and_injection_time():
    ds = _bqml_header(PatientWeight=None, RadionuclideTotalDose=None,
                      RadiopharmaceuticalStartTime=None)
    f = suv_factor(ds, overrides={"weight_kg": 70, "dose_mbq": 250, "injection_time": "10:00"})
    assert f.factor == pytest.approx(suv_factor(_bqml_header()).factor, rel=1e-12)


def test_units_that_cannot_become_suv_are_refused():
    with pytest.raises(InputError, match="PROPCPS"):
        suv_factor(_bqml_header(Units="PROPCPS"))


# ------------------------------------------------------------------ plausibility rules (issue 19)

def test_the_decay_interval_limit_is_configurable():
    late = _bqml_header(RadiopharmaceuticalStartTime="030000")  # 8 h before the scan
    with pytest.raises(InputError, match="480.0 min, outside the plausible 0-360 min"):
        suv_factor(late)
    f = suv_factor(late, limits=SUVLimits(max_decay_minutes=600))
    assert (f.reference_time - f.injection_time).total_seconds() == 8 * 3600


def test_every_frame_is_checked_with_decay_correction_none():
    early = _bqml_header(DecayCorrection="NONE", ActualFrameDuration="600000",
                         AcquisitionTime="095000")  # 10 min before the injection at 10:00
    with pytest.raises(InputError, match=r"/study/pet: RadiopharmaceuticalStartTime \(0018,1072\) "
                                         r"10:00:00 is 10.0 min after the scan reference"):
        suv_factor(early, path="/study/pet")
    frames = [_bqml_header(DecayCorrection="NONE", ActualFrameDuration="600000",
                           AcquisitionTime=t) for t in ("110000", "173000")]  # 7.5 h p.i.
    with pytest.raises(InputError, match="a frame's AcquisitionDate/Time .* is 450.0 min"):
        suv_factor(frames, path="/study/pet")


def test_a_weight_in_grams_is_still_read_as_grams_and_then_checked():
    f = suv_factor(_bqml_header(PatientWeight="70000"))
    assert f.weight_kg == 70 and any("taken as grams" in w for w in f.warnings)
    with pytest.raises(InputError, match=r"PatientWeight \(0010,1030\) 700 kg \(PatientWeight "
                                         r"700000 read as grams\) is implausible"):
        suv_factor(_bqml_header(PatientWeight="700000"))


def test_a_forced_decay_interval_replaces_the_header_times():
    ref = suv_factor(_bqml_header())
    f = suv_factor(_bqml_header(RadiopharmaceuticalStartTime="113000"),
                   overrides={"force_decay_minutes": 60})
    assert f.factor == pytest.approx(ref.factor, rel=1e-12)
    assert "forced to 60 min" in f.rule
