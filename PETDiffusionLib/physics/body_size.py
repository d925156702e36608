"""Body size formulas for the SUV variants (docs/PHYSICS.md §1 "Variants"; QIBA FDG-PET/CT profile
appendix H; the IBSI SUV manual)."""
from __future__ import annotations


def lbm_janmahasatian_kg(weight_kg: float, height_m: float, sex: str) -> float:
    """Janmahasatian lean body mass (QIBA appendix H; PHYSICS.md §1): BMI = W/H²."""
    bmi = weight_kg / height_m ** 2
    male = 9270 * weight_kg / (6680 + 216 * bmi)
    female = 9270 * weight_kg / (8780 + 244 * bmi)
    return _by_sex(male, female, sex)


def lbm_james_kg(weight_kg: float, height_m: float, sex: str, male_coeff: float = 128.0) -> float:
    """James/Morgan lean body mass, H in cm (PHYSICS.md §1; IBSI manual: "LBMJAMES128" uses 128,
    DICOM "LBM" uses 120 for men)."""
    h_cm = height_m * 100.0
    male = 1.10 * weight_kg - male_coeff * (weight_kg / h_cm) ** 2
    female = 1.07 * weight_kg - 148 * (weight_kg / h_cm) ** 2
    return _by_sex(male, female, sex)


def ibw_kg(height_m: float, sex: str) -> float:
    """Ideal body weight (IBSI manual, SUVType IBW): male 48.0 + 1.06(H−152), female 45.5 + 0.91(H−152),
    H in cm."""
    h_cm = height_m * 100.0
    return _by_sex(48.0 + 1.06 * (h_cm - 152), 45.5 + 0.91 * (h_cm - 152), sex)


def bsa_dubois_m2(weight_kg: float, height_m: float) -> float:
    """Du Bois body surface area in m² (PHYSICS.md §1): 0.007184·W^0.425·H_cm^0.725."""
    return 0.007184 * weight_kg ** 0.425 * (height_m * 100.0) ** 0.725


def _by_sex(male: float, female: float, sex: str) -> float:
    sex = (sex or "").upper()[:1]
    if sex == "M":
        return male
    if sex == "F":
        return female
    # IBSI manual: no consensus for "O"; the mean of the sex-specific values (used by DRO_2_2).
    return (male + female) / 2.0
