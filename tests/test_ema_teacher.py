"""The EMA teacher: construction, loading, forward outputs, and updates from the optimizer step hook."""
import pytest
import torch

import open_clip
from open_clip_align.models import ema
from open_clip_align.models.hardneg import HardNegCLIP

TEACHER = "teacher."


def _model(name="degla-tiny-ViT", **kw):
    torch.manual_seed(0)
    return open_clip.create_model(name, **kw)


def _student_teacher(model):
    sd = model.state_dict()
    return ({k: v for k, v in sd.items() if not k.startswith(TEACHER)},
            {k[len(TEACHER):]: v for k, v in sd.items() if k.startswith(TEACHER)})


@pytest.fixture
def hook():
    handle = ema.install_step_hook()
    yield
    handle.remove()


def test_teacher_is_a_frozen_eval_copy_saved_under_teacher_prefix():
    model = _model()
    assert isinstance(model, HardNegCLIP) and type(model.teacher) is open_clip.model.CLIP
    student, teacher = _student_teacher(model)
    assert student.keys() == teacher.keys() and all(torch.equal(student[k], teacher[k]) for k in student)
    assert not any(p.requires_grad for p in model.teacher.parameters())
    model.train()
    assert model.training and not model.teacher.training
    assert model.plugin_state_prefixes == (TEACHER,) and _model("hardneg-tiny-ViT").plugin_state_prefixes == ()


def test_plain_checkpoint_seeds_the_teacher_and_a_plugin_checkpoint_keeps_it(tmp_path):
    plain = _model("hardneg-tiny-ViT")
    with torch.no_grad():
        for p in plain.parameters():
            p.add_(0.5)
    torch.save({"state_dict": plain.state_dict()}, tmp_path / "plain.pt")
    model = _model(pretrained=str(tmp_path / "plain.pt"))
    student, teacher = _student_teacher(model)
    for k, v in plain.state_dict().items():
        assert torch.equal(student[k], v) and torch.equal(teacher[k], v), k

    with torch.no_grad():
        model.teacher.visual.conv1.weight.mul_(2)
    torch.save({"state_dict": model.state_dict()}, tmp_path / "degla.pt")
    again = _model(pretrained=str(tmp_path / "degla.pt"))
    assert torch.equal(again.teacher.visual.conv1.weight, model.teacher.visual.conv1.weight)
    assert not torch.equal(again.teacher.visual.conv1.weight, again.visual.conv1.weight)


def _text(b=2, k=3, length=77):
    text = torch.randint(1, 1000, (b, 1 + k, length))
    text[0, 2] = 0  # a padded negative
    return text


def test_forward_emits_teacher_features_in_training_only():
    model = _model()
    model.emit_hardneg = model.emit_teacher = True
    image, text = torch.randn(2, 3, 64, 64), _text()
    out = model.train()(image, text)
    assert out["teacher_image_features"].shape == (2, 64) and out["teacher_text_features"].shape == (2, 64)
    assert out["teacher_neg_text_features"].shape == (2, 3, 64)
    assert not any(out[k].requires_grad for k in out if k.startswith("teacher_"))
    torch.testing.assert_close(out["teacher_neg_text_features"].norm(dim=-1), torch.ones(2, 3))
    # the teacher equals the student at the start, so its features do too
    torch.testing.assert_close(out["teacher_text_features"], out["text_features"].detach())
    assert out["neg_text_valid"].tolist() == [[True, False, True], [True, True, True]]
    assert not any(k.startswith("teacher_") for k in model.eval()(image, text))
    model.emit_teacher = False
    assert not any(k.startswith("teacher_") for k in model.train()(image, text))


def test_ema_closed_form_with_a_frozen_student(hook):
    """n updates towards a fixed student: θ_T(n) = α^n θ_T(0) + (1 − α^n) θ_S."""
    model = _model()
    model.ema_decay = 0.9
    with torch.no_grad():
        for p in model.teacher.parameters():
            p.mul_(-1.0)
    theta_t0 = {k: v.clone() for k, v in _student_teacher(model)[1].items()}
    ema.track(model)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0)
    for _ in range(5):
        opt.step()
    student, teacher = _student_teacher(model)
    for k, p in model.teacher.named_parameters():
        expected = 0.9 ** 5 * theta_t0[k] + (1 - 0.9 ** 5) * student[k]
        torch.testing.assert_close(teacher[k], expected, rtol=1e-5, atol=1e-6, msg=k)
    assert model.ema_steps == 5


def test_hook_updates_only_models_whose_optimizer_stepped(hook):
    model, other = _model(), _model()
    for m in (model, other):
        m.ema_decay = 0.5
        with torch.no_grad():
            m.teacher.logit_scale.fill_(0.0)
        ema.track(m)
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0).step()
    torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1).step()  # an unrelated optimizer
    assert (model.ema_steps, other.ema_steps) == (1, 0)
    assert model.teacher.logit_scale.item() == pytest.approx(0.5 * model.logit_scale.item())
    assert other.teacher.logit_scale.item() == 0.0


def test_no_update_when_grad_scaler_skips_the_step(hook):
    model = _model()
    model.ema_decay = 0.5
    ema.track(model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.1)
    scaler = torch.amp.GradScaler("cpu")
    before = model.teacher.visual.conv1.weight.clone()
    out = model(torch.randn(2, 3, 64, 64), torch.randint(1, 1000, (2, 77)))
    scaler.scale(out["image_features"].sum() + out["text_features"].sum()).backward()
    params[0].grad.fill_(float("inf"))
    scaler.step(opt)
    scaler.update()
    assert model.ema_steps == 0 and torch.equal(model.teacher.visual.conv1.weight, before)


def test_decay_one_keeps_the_teacher_frozen_and_update_is_fused():
    model = _model()
    with torch.no_grad():
        model.visual.conv1.weight.add_(1.0)
    before = model.teacher.visual.conv1.weight.clone()
    model.update_teacher(decay=1.0)
    assert torch.equal(model.teacher.visual.conv1.weight, before)
    a, b = [torch.ones(3), torch.zeros(2)], [torch.zeros(3), torch.ones(2)]
    ema.ema_update_(a, b, 0.75)
    assert a[0].tolist() == [0.75] * 3 and a[1].tolist() == [0.25] * 2
    assert model.teacher_drift() > 0


def test_buffers_are_copied_and_name_mismatch_is_caught():
    model = _model()
    model.attn_mask.fill_(1.0)  # a (non-persistent) buffer: copied, not averaged
    model.update_teacher()
    assert torch.equal(model.teacher.attn_mask, model.attn_mask)
    model.teacher.extra = torch.nn.Parameter(torch.zeros(1), requires_grad=False)
    model._ema_cache = None
    with pytest.raises(RuntimeError, match="does not mirror"):
        model.update_teacher()
