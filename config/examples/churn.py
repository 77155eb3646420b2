"""The example churn model: a seeded data generator and a trainer.

``generate(n, seed=...)`` returns a table with the features ``days_since_last_login``,
``plan``, ``user_age``, ``monthly_spend``, ``support_tickets`` and ``tenure_months``, the
segments ``customer_tier`` (``smb``, ``midmarket`` and a small ``enterprise`` slice) and
``region``, and the label ``churned``. ``shift`` moves the population (more days since the
last login); ``null_as_zero`` imitates a broken upstream pipeline that fills nulls with 0.

``train`` has driftwarden's trainer signature (``trainer: examples.churn:train`` in a
policy): a scikit-learn Pipeline (one-hot encoding of ``plan``, then gradient boosting or
logistic regression), fitted on the given table.

>>> df = generate(500, seed=1)
>>> sorted(df["customer_tier"].unique().tolist())
['enterprise', 'midmarket', 'smb']
>>> model = train(df, target=TARGET, features=FEATURES, params={"kind": "logistic"})
>>> model.predict_proba(df[FEATURES].head(2)).shape
(2, 2)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

__all__ = ["CATEGORICAL", "FEATURES", "SEGMENTS", "TARGET", "generate", "to_rows", "train"]

FEATURES = [
    "days_since_last_login",
    "plan",
    "user_age",
    "monthly_spend",
    "support_tickets",
    "tenure_months",
]
CATEGORICAL = ["plan"]
SEGMENTS = ["customer_tier", "region"]
TARGET = "churned"


def generate(
    n: int,
    *,
    seed: int = 0,
    shift: float = 0.0,
    null_as_zero: float = 0.0,
    enterprise_share: float = 0.06,
) -> pd.DataFrame:
    """``n`` seeded rows of churn data (see the module docstring for the knobs).

    ``shift`` (in units of the login-gap scale) lengthens ``days_since_last_login``; a
    ``null_as_zero`` share of ``days_since_last_login`` and ``monthly_spend`` is set to 0, the
    signature of a pipeline that fills missing values with zero.
    """
    rng = np.random.default_rng(seed)
    other = (1.0 - enterprise_share) / 1.3
    tier = rng.choice(
        ["smb", "midmarket", "enterprise"], n, p=[other, 0.3 * other, enterprise_share]
    )
    region = rng.choice(["eu", "us", "apac"], n, p=[0.4, 0.4, 0.2])
    plan = np.where(
        tier == "enterprise",
        "business",
        rng.choice(["free", "pro", "business"], n, p=[0.5, 0.35, 0.15]),
    )
    days = np.round(rng.exponential(8.0 * (1.0 + shift), n) + 1.0)
    age = np.clip(np.round(rng.normal(40, 11, n)), 18, 85)
    spend = np.round(
        rng.gamma(2.0, 20.0, n) * np.select([plan == "pro", plan == "business"], [2.0, 5.0], 1.0),
        2,
    )
    tickets = rng.poisson(np.where(tier == "enterprise", 2.5, 0.8))
    tenure = np.round(rng.gamma(2.0, 10.0, n))
    # Churn: long login gaps and short tenure drive it everywhere; for enterprise customers
    # support tickets matter a lot (a relationship a model can get wrong in that slice only).
    logit = (
        -3.0
        + 0.16 * days
        - 0.05 * tenure
        - 0.015 * (age - 40)
        + np.select([plan == "free", plan == "pro"], [0.8, 0.0], -0.5)
        + np.where(tier == "enterprise", 1.4 * tickets, 0.15 * tickets)
    )
    churned = (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype(int)
    df = pd.DataFrame(
        {
            "days_since_last_login": days,
            "plan": plan,
            "user_age": age,
            "monthly_spend": spend,
            "support_tickets": tickets.astype(float),
            "tenure_months": tenure,
            "customer_tier": tier,
            "region": region,
            TARGET: churned,
        }
    )
    if null_as_zero > 0:
        broken = rng.random(n) < null_as_zero
        df.loc[broken, ["days_since_last_login", "monthly_spend"]] = 0.0
    return df


def to_rows(
    df: pd.DataFrame, *, start: int = 0, t0: float = 1_800_000_000.0, prefix: str = "p"
) -> list[dict[str, Any]]:
    """The table as joined examples for the labeled store (one per row, a second apart)."""
    rows = []
    for i, rec in enumerate(df.to_dict("records")):
        rows.append(
            {
                "prediction_id": f"{prefix}{start + i}",
                "features": {k: rec[k] for k in FEATURES},
                "segment": {k: rec[k] for k in SEGMENTS},
                "label": int(rec[TARGET]),
                "prediction": {},
                "timestamp": t0 + start + i,
            }
        )
    return rows


def train(
    train: pd.DataFrame,
    *,
    target: str,
    features: Sequence[str],
    params: Mapping[str, Any],
) -> Pipeline:
    """Fit the churn model (driftwarden's trainer signature).

    ``params``: ``kind`` = ``"gbm"`` (default, HistGradientBoosting) or ``"logistic"``;
    ``max_iter``, ``learning_rate``, ``early_stopping`` for the GBM; ``C`` for the logistic model; ``seed``.
    """
    features = list(features)
    categorical = [c for c in features if c in CATEGORICAL]
    numeric = [c for c in features if c not in CATEGORICAL]
    kind = params.get("kind", "gbm")
    seed = int(params.get("seed", 0))
    estimator: Any
    if kind == "logistic":
        estimator = LogisticRegression(C=float(params.get("C", 1.0)), max_iter=1000)
        num_step: Any = StandardScaler()
    elif kind == "gbm":
        estimator = HistGradientBoostingClassifier(
            max_iter=int(params.get("max_iter", 100)),
            learning_rate=float(params.get("learning_rate", 0.1)),
            early_stopping=params.get("early_stopping", "auto"),
            random_state=seed,
        )
        num_step = "passthrough"
    else:
        raise ValueError(f"churn trainer: unknown params.kind {kind!r} (gbm or logistic).")
    pre = ColumnTransformer(
        [
            ("cat", OneHotEncoder(handle_unknown="ignore", sparse_output=False), categorical),
            ("num", num_step, numeric),
        ]
    )
    model = Pipeline([("pre", pre), ("clf", estimator)])
    model.fit(train[features], train[target].astype(int))
    return model
