// The list + add/edit dialog + enable switch + delete logic shared by the registries,
// whitelists and users pages. `resource` is one of api.registries / api.whitelists /
// api.users (list, create, update(id, body), remove(id)).
import { computed, onMounted, reactive, ref } from 'vue'
import { ElMessage } from 'element-plus'
import { t } from '../i18n'
import { clearErrors, confirmDanger, showError } from '../utils'

// options.blank(): the empty form; options.afterChange(): called after every successful
// save, switch or delete (the whitelists page re-runs its match tester).
export function useCrud(resource, { blank = () => ({}), afterChange = () => {} } = {}) {
  const items = ref([])
  const loading = ref(false)
  // id -> what the row is busy with ('enabled' while its switch saves; pages add their own)
  const busy = reactive({})

  const dialog = ref(false)
  const editing = ref(null) // the row being edited, null when adding
  const saving = ref(false)
  const formRef = ref() // the FormDialog (its validate())
  const fieldErrors = reactive({}) // field -> the server's message, shown next to the field
  const formError = ref('') // an error that belongs to no field, shown in the dialog
  const form = reactive(blank())
  // v-bind on the page's FormDialog: open/closed, the form, the save button's spinner, the error
  const dialogProps = computed(() => ({
    modelValue: dialog.value,
    'onUpdate:modelValue': (v) => {
      dialog.value = v
    },
    model: form,
    saving: saving.value,
    formError: formError.value,
  }))

  async function load() {
    loading.value = true
    try {
      const data = await resource.list()
      items.value = (data && data.items) || []
    } catch (e) {
      showError(e)
    } finally {
      loading.value = false
    }
  }

  onMounted(load)

  // Opens the dialog for `row` (null: a new one) with the blank form overlaid by `values`.
  function openDialog(row = null, values = {}) {
    editing.value = row
    Object.assign(form, blank(), values)
    clearErrors(fieldErrors)
    formError.value = ''
    dialog.value = true
  }

  // Validates the form, then runs send(); on success a toast, the dialog closes and the
  // list reloads; the server's field errors go next to the fields, other errors into the dialog.
  async function submit(send, message = t('common.saved')) {
    clearErrors(fieldErrors)
    formError.value = ''
    const valid = await formRef.value.validate().catch(() => false)
    if (!valid) return
    saving.value = true
    try {
      await send()
      ElMessage({ type: 'success', message })
      dialog.value = false
      await load()
      afterChange()
    } catch (e) {
      showError(e, fieldErrors)
      if (!e.handled && !Object.keys(e.fields || {}).length) formError.value = e.message
    } finally {
      saving.value = false
    }
  }

  // Creates, or updates the row being edited.
  function upsert(body) {
    return editing.value ? resource.update(editing.value.id, body) : resource.create(body)
  }

  async function setEnabled(row, value) {
    busy[row.id] = 'enabled'
    try {
      const updated = await resource.update(row.id, { enabled: value })
      Object.assign(row, updated || { enabled: value })
      afterChange()
    } catch (e) {
      showError(e)
    } finally {
      delete busy[row.id]
    }
  }

  // Deletes `row` after the user confirmed `confirmMessage`.
  async function remove(row, confirmMessage) {
    if (!(await confirmDanger(confirmMessage))) return
    try {
      await resource.remove(row.id)
      ElMessage({ type: 'success', message: t('common.deleted') })
      await load()
      afterChange()
    } catch (e) {
      showError(e)
    }
  }

  return {
    items,
    loading,
    busy,
    load,
    dialog,
    editing,
    saving,
    formRef,
    fieldErrors,
    formError,
    form,
    dialogProps,
    openDialog,
    submit,
    upsert,
    setEnabled,
    remove,
  }
}
