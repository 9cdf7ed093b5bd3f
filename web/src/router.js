import { createRouter, createWebHistory } from 'vue-router'
import { isLoggedIn } from './api'
import Layout from './components/Layout.vue'
import Login from './views/Login.vue'

const routes = [
  { path: '/login', name: 'login', component: Login, meta: { public: true } },
  {
    path: '/',
    component: Layout,
    children: [
      { path: '', name: 'dashboard', component: () => import('./views/Dashboard.vue'), meta: { title: 'menu.dashboard' } },
      { path: 'registries', name: 'registries', component: () => import('./views/Registries.vue'), meta: { title: 'menu.registries' } },
      { path: 'whitelists', name: 'whitelists', component: () => import('./views/Whitelists.vue'), meta: { title: 'menu.whitelists' } },
      { path: 'users', name: 'users', component: () => import('./views/Users.vue'), meta: { title: 'menu.users' } },
      { path: 'cache', name: 'cache', component: () => import('./views/Cache.vue'), meta: { title: 'menu.cache' } },
      { path: 'sync', name: 'sync', component: () => import('./views/Sync.vue'), meta: { title: 'menu.sync' } },
      { path: 'logs', name: 'logs', component: () => import('./views/Logs.vue'), meta: { title: 'menu.logs' } },
      { path: 'audit', name: 'audit', component: () => import('./views/Audit.vue'), meta: { title: 'menu.audit' } },
      { path: 'nodes', name: 'nodes', component: () => import('./views/Nodes.vue'), meta: { title: 'menu.nodes' } },
      { path: 'help', name: 'help', component: () => import('./views/Help.vue'), meta: { title: 'menu.help' } },
    ],
  },
  { path: '/:pathMatch(.*)*', redirect: '/' },
]

export const router = createRouter({
  history: createWebHistory('/'),
  routes,
})

router.beforeEach((to) => {
  if (!to.meta.public && !isLoggedIn()) {
    return { name: 'login', query: to.fullPath !== '/' ? { redirect: to.fullPath } : {} }
  }
  if (to.name === 'login' && isLoggedIn()) return { path: '/' }
  return true
})
