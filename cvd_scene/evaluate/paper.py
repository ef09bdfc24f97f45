"""The CVD paper's consistency numbers (NeurIPS 2024, Tables 1 and 2), next to which the evaluation and the
report print ours. Data only."""

PAPER_CROSS_VIDEO = {
    "CVD (paper)": {"rot_auc": (25.2, 40.7, 57.5), "trans_auc": (3.7, 9.6, 19.9), "precision": 51.0, "matching_score": 23.5},
    "MotionCtrl+SVD (paper)": {
        "rot_auc": (12.2, 28.2, 48.0),
        "trans_auc": (1.2, 4.9, 13.5),
        "precision": 23.5,
        "matching_score": 12.8,
    },
}
PAPER_PER_VIDEO = {
    "Real RealEstate10K frames (paper)": {
        "rot_auc": (61.4, 77.2, 87.8),
        "trans_auc": (6.9, 17.5, 41.0),
        "precision": 60.2,
        "matching_score": 36.5,
    },
    "CVD (paper)": {"rot_auc": (55.5, 71.8, 83.3), "trans_auc": (5.6, 15.9, 33.2), "precision": 76.9, "matching_score": 42.3},
}
