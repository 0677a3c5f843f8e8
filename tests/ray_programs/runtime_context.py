import ray


@ray.remote
def task_ids():
    ctx = ray.get_runtime_context()
    return ctx.get_job_id(), ctx.get_task_id(), ctx.get_actor_id()


@ray.remote
class Introspect:
    def ids(self):
        ctx = ray.get_runtime_context()
        return ctx.get_job_id(), ctx.get_task_id(), ctx.get_actor_id()


ray.init()
ctx = ray.get_runtime_context()
job = ctx.get_job_id()
print("driver:", isinstance(job, str) and len(job) > 0, ctx.get_task_id(), ctx.get_actor_id())

(job1, task1, actor1), (job2, task2, _) = ray.get([task_ids.remote(), task_ids.remote()])
print("task:", job1 == job, isinstance(task1, str) and len(task1) > 0, task1 != task2, actor1)

actor = Introspect.remote()
(job3, task3, actor3), (_, task4, actor4) = ray.get([actor.ids.remote(), actor.ids.remote()])
print("actor:", job3 == job, isinstance(actor3, str) and len(actor3) > 0, actor3 == actor4,
      task3 != task4 and None not in (task3, task4))
other = Introspect.remote()
print("other actor:", ray.get(other.ids.remote())[2] != actor3)
